"""Report attachments out of a mail, decompressed within hard bounds: these are files from anyone on the
internet (a zip bomb is one mail away). Pure functions, no I/O, safe on arbitrary bytes (fuzzed).

Decompression streams: output is produced in small chunks and counted as it comes, so a bomb is refused
after at most ``max_decompressed`` bytes (or the ratio cap) were made, in bounded time and memory, never
inflated first and measured after.
"""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Final, Literal

ReportKind = Literal["tlsrpt", "dmarc"]
KINDS: Final[tuple[ReportKind, ...]] = ("tlsrpt", "dmarc")
# The `kind` label of the errors and skipped counters: a report kind, or `unknown` before one is known.
ERROR_KINDS: Final[tuple[str, ...]] = (*KINDS, "unknown")
# Why a report (or a mail) could not be read: the closed set of `reason` of mailcanary_reports_errors_total.
ERROR_REASONS: Final[tuple[str, ...]] = (
    "too_large",  # the mail or an attachment is over its byte cap (not read)
    "bomb",  # decompressed output over the size cap or the ratio cap (refused mid-stream)
    "bad_archive",  # gzip/zip that does not decompress, an encrypted zip, none or several files in it
    "bad_mime",  # the mail cannot be split into parts, or too many parts
    "bad_json",  # TLS-RPT: not JSON (or nested too deep)
    "bad_xml",  # DMARC: not well-formed XML
    "forbidden_xml",  # DMARC: a DTD, entity or external reference (refused by defusedxml)
    "bad_report",  # parsed, but not a report of its kind (a required field missing or of the wrong type)
    "too_many_records",  # more policies/failure details/records than max_records
)
CHUNK: Final = 64 * 1024  # decompression step: at most this much output is made before it is counted
MAX_PARTS: Final = 32  # MIME parts looked at per mail
MAX_ZIP_MEMBERS: Final = 16  # entries in a zip's directory before it is refused
RATIO_FLOOR: Final = (
    1024 * 1024
)  # output up to this size passes whatever its ratio (small, highly repetitive)


class ReportError(Exception):
    """A report that cannot be read: ``reason`` is one of :data:`ERROR_REASONS`, ``kind`` one of
    :data:`ERROR_KINDS`. The message never carries the report's content beyond a few fixed words."""

    def __init__(self, reason: str, message: str, kind: str = "unknown") -> None:
        super().__init__(message)
        assert reason in ERROR_REASONS, reason
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class Limits:
    """Caps on one mail's reports (config keys of the same names, see docs/configuration.md)."""

    max_attachment_bytes: int = 5 * 1024 * 1024  # one attachment as mailed (compressed)
    max_decompressed_bytes: int = 20 * 1024 * 1024  # one report after decompression
    max_ratio: int = 100  # decompressed / compressed, above RATIO_FLOOR
    max_records: int = 10_000  # TLS-RPT policies + failure details, DMARC records, per report


@dataclass(frozen=True)
class Attachment:
    """One candidate report of a mail: its decompressed bytes and the kind its media type or name says
    (None: tell by content)."""

    data: bytes
    hint: ReportKind | None
    media_type: str
    filename: str


_TLSRPT_TYPES: Final = frozenset({"application/tlsrpt+gzip", "application/tlsrpt+json", "application/tlsrpt"})
_ARCHIVE_TYPES: Final = frozenset(
    {
        "application/zip",
        "application/x-zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
        "application/x-gunzip",
        "application/octet-stream",
    }
)
_TEXT_TYPES: Final = frozenset({"text/xml", "application/xml", "application/json", "text/json"})
_SUFFIXES: Final = (".json", ".json.gz", ".xml", ".xml.gz", ".gz", ".zip", ".xml.zip")


def _hint(media_type: str, filename: str) -> ReportKind | None:
    if media_type in _TLSRPT_TYPES:
        return "tlsrpt"
    name = filename.lower()
    if name.endswith((".json", ".json.gz")) or media_type in ("application/json", "text/json"):
        return "tlsrpt"
    if name.endswith((".xml", ".xml.gz", ".zip")) or media_type in ("text/xml", "application/xml"):
        return "dmarc"
    return None


def _is_candidate(part: Message, media_type: str, filename: str) -> bool:
    if media_type in _TLSRPT_TYPES or media_type in _ARCHIVE_TYPES or media_type in _TEXT_TYPES:
        return True
    return filename.lower().endswith(_SUFFIXES)


def attachments(raw: bytes, limits: Limits) -> list[Attachment]:
    """The report candidates of a mail, each decompressed within ``limits``; raises :class:`ReportError`
    for the first one that cannot be read (a mail carries one report; RFC 8460 §5.3, RFC 7489 §7.2.1.1).
    A mail with no candidate at all gives ``[]`` (not a report: counted as skipped, not as an error)."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        parts = list(_walk(msg))
    except ReportError:
        raise
    except Exception as exc:  # the email package raises many kinds on garbage
        raise ReportError("bad_mime", f"the mail cannot be parsed as MIME ({type(exc).__name__})") from None
    out: list[Attachment] = []
    for part in parts:
        media_type = part.get_content_type().lower()
        filename = _filename(part)
        if part.is_multipart() or not _is_candidate(part, media_type, filename):
            continue
        hint = _hint(media_type, filename)
        payload = _decoded(part, limits, hint)
        out.append(Attachment(unpack(payload, limits, hint), hint, media_type, filename))
    return out


def _walk(msg: Message) -> Iterator[Message]:
    for count, part in enumerate(msg.walk(), 1):
        if count > MAX_PARTS:
            raise ReportError("bad_mime", f"more than {MAX_PARTS} MIME parts")
        yield part


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
    except Exception:
        return ""
    return str(name)[:255] if isinstance(name, str) else ""


def _decoded(part: Message, limits: Limits, hint: ReportKind | None) -> bytes:
    """The part's body after its transfer encoding, refused unread when its encoded size already says it
    is over the attachment cap (base64 is 4/3 of the data, quoted-printable at least the data)."""
    body = part.get_payload(decode=False)
    if not isinstance(body, str):
        raise ReportError("bad_mime", "an attachment part without a body", hint or "unknown")
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    size = len(body) * 3 // 4 if cte == "base64" else len(body)
    if size > limits.max_attachment_bytes + 4:
        raise ReportError(
            "too_large",
            f"attachment over max_attachment_bytes ({limits.max_attachment_bytes})",
            hint or "unknown",
        )
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        raise ReportError("bad_mime", "an attachment that cannot be decoded", hint or "unknown")
    if len(data) > limits.max_attachment_bytes:
        raise ReportError(
            "too_large",
            f"attachment over max_attachment_bytes ({limits.max_attachment_bytes})",
            hint or "unknown",
        )
    return data


def unpack(data: bytes, limits: Limits, hint: ReportKind | None = None) -> bytes:
    """``data`` as gzip, zip (one file, any name) or plain, by its magic bytes; decompressed within
    the size and ratio caps."""
    kind = hint or "unknown"
    if data[:2] == b"\x1f\x8b":
        return gunzip(data, limits, kind)
    if data[:4] == b"PK\x03\x04":
        return unzip(data, limits, kind)
    if len(data) > limits.max_decompressed_bytes:
        raise ReportError(
            "too_large", f"report over max_decompressed_bytes ({limits.max_decompressed_bytes})", kind
        )
    return data


def _cap(compressed: int, limits: Limits) -> int:
    """The most output ``compressed`` input may give: the absolute cap, and the ratio cap above a floor."""
    return min(limits.max_decompressed_bytes, max(RATIO_FLOOR, compressed * limits.max_ratio))


def _bomb(limits: Limits, compressed: int, kind: str) -> ReportError:
    cap = _cap(compressed, limits)
    if cap < limits.max_decompressed_bytes:
        return ReportError(
            "bomb", f"decompresses to more than {limits.max_ratio}x its {compressed} bytes (max_ratio)", kind
        )
    return ReportError("bomb", f"decompresses to more than max_decompressed_bytes ({cap})", kind)


def gunzip(data: bytes, limits: Limits, kind: str = "unknown") -> bytes:
    """Every gzip member of ``data``, streamed in :data:`CHUNK` steps and refused at the cap."""
    cap = _cap(len(data), limits)
    out = bytearray()
    rest = data
    members = 0
    try:
        while rest:
            members += 1
            if members > MAX_ZIP_MEMBERS:
                raise ReportError("bad_archive", "too many gzip members", kind)
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, CHUNK)
            while True:
                out += chunk
                if len(out) > cap:
                    raise _bomb(limits, len(data), kind)
                if d.eof or (not d.unconsumed_tail and len(chunk) < CHUNK):
                    break  # the member's end, or the input is used up with nothing pending
                chunk = d.decompress(d.unconsumed_tail, CHUNK)  # a full chunk: more may be pending
            if not d.eof:
                raise ReportError("bad_archive", "gzip data ends before its end marker", kind)
            rest = d.unused_data.lstrip(b"\0")  # padding after the last member is harmless
    except zlib.error:
        raise ReportError("bad_archive", "not valid gzip data", kind) from None
    return bytes(out)


def unzip(data: bytes, limits: Limits, kind: str = "unknown") -> bytes:
    """The one report file of a zip, whatever its name (a directory entry or a ``__MACOSX`` companion is
    ignored; two report files are refused), read in :data:`CHUNK` steps and refused at the cap."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError):
        raise ReportError("bad_archive", "not a readable zip file", kind) from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ReportError("bad_archive", f"more than {MAX_ZIP_MEMBERS} entries in the zip", kind)
    files = [i for i in infos if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
    if len(files) != 1:
        xml = [i for i in files if i.filename.lower().endswith(".xml")]
        if len(xml) != 1:
            raise ReportError("bad_archive", f"{len(files)} files in the zip, not one report", kind)
        files = xml
    info = files[0]
    if info.flag_bits & 0x1:
        raise ReportError("bad_archive", "an encrypted zip entry", kind)
    cap = _cap(max(info.compress_size, 1), limits)
    cap = min(cap, _cap(len(data), limits))
    if info.file_size > cap:  # declared: refused before any work (the stream is counted anyway)
        raise _bomb(limits, len(data), kind)
    out = bytearray()
    try:
        with zf.open(info) as stream:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                out += chunk
                if len(out) > cap:
                    raise _bomb(limits, len(data), kind)
    except ReportError:
        raise
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, EOFError, OSError, zlib.error):
        raise ReportError("bad_archive", "the zip entry cannot be read", kind) from None
    return bytes(out)
