"""What a mail endpoint's TLS accepts, told by ClientHellos of our own (SSLv2 … TLS 1.3, weak classes).

Python's ``ssl`` (OpenSSL 3) cannot offer SSLv2/SSLv3, RC4, 3DES or EXPORT, so the hellos
are built by ``probes.tls.hello`` and only the server's first flight (ServerHello … ServerHelloDone) is
read: knowing that a version or suite was chosen needs no finished handshake.

Every fact is three-valued: True/False is what the server answered, None is "unknown" (not checked, a
``421``, a refused connection, a timeout, a reply we could not read): never a false "not accepted".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from probes.errors import ProbeError
from probes.wire.framing import BoundedReader, ReadLimits, show
from probes.wire.net import close_writer, tcp_connect
from probes.wire.slots import maybe_session

if TYPE_CHECKING:
    from probes.recorder import Recorder
    from probes.tls import hello as h
    from probes.tls.audit import TLSCheckSettings
else:  # the ClientHello tables and key shares (cryptography's ec/x25519) load with the first scan
    from probes.lazy import module

    h = module("probes.tls.hello")

# Label values (metrics and reports use exactly these spellings).
PROTOCOLS: Final = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Weak classes: accepting any of these is a finding (alerted).
WEAK_CLASSES: Final = ("null", "anon", "export", "rc4", "3des")
# Informational classes: reported, not alerted by default.
INFO_CLASSES: Final = ("cbc_only", "sha1_mac")
DEFAULT_RESCAN: Final = 86400.0  # seconds: re-scanned after this, or when the leaf certificate changes


@dataclass
class ScanFacts:
    """One endpoint's scan; ``checked_at`` None means never scanned (every fact then None)."""

    checked_at: float | None = None  # unix time of the scan these facts come from (may be remembered)
    connections: int = 0  # connections the scan opened (its cost)
    protocols: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS))
    classes: dict[str, bool | None] = field(
        default_factory=lambda: dict.fromkeys(WEAK_CLASSES + INFO_CLASSES)
    )
    non_fs: bool | None = None  # a suite without forward secrecy (static RSA/DH key exchange) accepted
    preferred: dict[str, str] = field(default_factory=dict)  # protocol -> IANA suite name the server chose
    dh_bits: int | None = None  # finite-field DHE group size when DHE is accepted
    tls13_group: str | None = None  # key-share group chosen in TLS 1.3 (e.g. "x25519")
    secure_renegotiation: bool | None = None  # RFC 5746 renegotiation_info in the TLS 1.2 ServerHello
    compression: bool | None = None  # the server chose a TLS compression method (CRIME)
    # the Certificate message (TLS ≤1.2), as sent
    served_chain: list[bytes] = field(default_factory=list, repr=False)
    stapled: bool | None = None  # an OCSP response was stapled (status_request, TLS ≤1.2)
    ocsp_staple: bytes | None = field(default=None, repr=False)  # the stapled OCSPResponse, DER
    # hello name -> why its answer is unknown: a protocol ("TLSv1.2" …), "weakN"/"infoN" (the N-th
    # elimination hello), "non_fs", "dhe"; "not tried: …" for what the scan never reached
    errors: dict[str, str] = field(default_factory=dict)
    dhe: bool | None = None  # a finite-field DHE suite accepted (dh_bits is its group size)
    rate_limited: bool = False  # the scan stopped at a 421 / BYE / -ERR before TLS: the rest is unknown

    @property
    def complete(self) -> bool:
        """Every protocol, class and the forward-secrecy fact known, no hello unknown: worth keeping."""
        known = [*self.protocols.values(), *self.classes.values(), self.non_fs]
        return self.checked_at is not None and not self.errors and all(v is not None for v in known)


MAX_CONNECTIONS: Final = 14  # the most one scan opens; a fact it did not reach stays unknown
_LIMITS: Final = ReadLimits(max_line=4096, max_header=4096, max_message=16 * 1024)
_MAX_REPLY_LINES: Final = 100  # lines of one pre-TLS reply (EHLO lists a dozen)
_DIALOGUE_STEPS: Final = 3  # banner, EHLO, STARTTLS: the dialogue before TLS has this many step timeouts
_TIMEOUTS_IN_A_ROW: Final = 2  # hellos left unanswered in a row before the scan gives up


class _Stop(Exception):
    """The dialogue before TLS failed (no connection, 421, -ERR, NO/BAD, no STARTTLS): stop scanning."""

    def __init__(self, message: str, *, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.rate_limited = rate_limited


class _Unknown(Exception):
    """One hello got no answer we can use (timeout, reset, garbage): its fact is unknown."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timeout = timeout


async def scan(settings: TLSCheckSettings, recorder: Recorder) -> ScanFacts:
    """Scan one endpoint (STARTTLS or implicit TLS as ``settings.endpoint`` says), a handful of
    connections, one at a time. Never raises for what the server does; the facts say unknown.

    Raises :class:`ProbeError` only for bad settings (reason ``config``: a protocol other than smtp,
    imap, pop3, tcp; a mode other than implicit/starttls; tcp with starttls) and, with ``settings.slots``,
    ``queue_timeout`` when no session slot came in time (nothing was sent then)."""
    _check(settings)
    async with maybe_session(settings.slots, settings.endpoint, settings.protocol, recorder):
        with recorder.phase("tls_scan"):
            scanner = _Scanner(settings, recorder)
            await scanner.run()
            return scanner.facts


def _check(settings: TLSCheckSettings) -> None:
    mode, protocol = settings.endpoint.tls_mode, settings.protocol
    if protocol not in (*_STARTTLS, "tcp"):
        raise ProbeError(f"unknown TLS scan protocol {protocol!r}", reason="config")
    if mode not in ("implicit", "starttls"):
        raise ProbeError(f"a TLS scan needs tls mode implicit or starttls, not {mode!r}", reason="config")
    if protocol == "tcp" and mode != "implicit":
        raise ProbeError("plain tcp has no STARTTLS: use mode implicit", reason="config")


class _Scanner:
    """The plan: each step skips what earlier answers already told (docs/architecture.md, "The TLS scan").

    1. TLS 1.2 with every suite of the table in a modern client's order, status_request,
       renegotiation_info and deflate: preferred suite, served chain, staple, secure renegotiation,
       compression, DH size if DHE was chosen. A server that answers a lower version tells that one.
    2. TLS 1.3 only (a HelloRetryRequest counts as accepted): suite and key-share group.
    3. TLS 1.1, TLS 1.0, SSLv3 (no extensions), each with every suite; SSLv2 with every cipher spec.
    4. Weak classes by elimination: one hello offering every suite of every class still unknown; refused
       ⇒ all of them False; accepted ⇒ the chosen suite's classes True, and again without them.
    5. Forward secrecy: every static RSA/DH/ECDH suite; accepted ⇒ ``non_fs`` True.
    6. DHE only, when no DHE answer is known yet: ``dhe`` and ``dh_bits``.
    7. The informational classes by elimination like 4: ``cbc_only`` True when the server chooses a CBC
       suite for a client that offers nothing else (an old client still gets a session in CBC mode);
       ``sha1_mac`` True when it chooses a suite whose records are authenticated with HMAC-SHA1.
    Steps 4-7 need no connection when the server refuses every version up to TLS 1.2.
    """

    def __init__(self, settings: TLSCheckSettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.facts = ScanFacts(checked_at=time.time())
        self.stopped: str | None = None
        self.timeouts = 0
        self.answered = False  # the server answered a hello of this scan (a ServerHello or an alert)
        self.closed_early: list[str] = []  # version hellos closed without a word before any answer
        self.name = settings.endpoint.server_hostname

    # ---- the plan ----------------------------------------------------------------------------------

    async def run(self) -> None:
        f = self.facts
        await self._rich_tls12()
        await self._tls13()
        for version in (h.TLS11, h.TLS10, h.SSL3):
            if f.protocols[h.VERSION_NAMES[version]] is None:
                await self._version(version)
        await self._sslv2()
        self._resolve_closed()
        legacy = [f.protocols[n] for n in ("SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2")]
        if all(v is False for v in legacy):  # nothing up to TLS 1.2: no suite of those can be chosen
            for cls in WEAK_CLASSES + INFO_CLASSES:
                if f.classes[cls] is None:
                    f.classes[cls] = False
            f.non_fs = False if f.non_fs is None else f.non_fs
            f.dhe = False if f.dhe is None else f.dhe
            return
        await self._eliminate("weak", WEAK_CLASSES)
        if f.non_fs is None:
            answer = await self._hello("non_fs", h.suites_where(lambda s: not s.forward_secret))
            if answer is not None and answer.verdict != "unknown":
                f.non_fs = answer.verdict == "accepted"
        if f.dhe is None:
            answer = await self._hello("dhe", h.suites_where(lambda s: s.ffdhe))
            if answer is not None and answer.verdict != "unknown":
                f.dhe = answer.verdict == "accepted"
        await self._eliminate("info", INFO_CLASSES)

    def _resolve_closed(self) -> None:
        """Version hellos the server closed silently before it had answered any hello: once it has
        answered one (it is not closing on us as such), those closes are refusals like the later ones."""
        if not self.answered:
            return
        for name in self.closed_early:
            if self.facts.protocols[name] is None:
                self.facts.protocols[name] = False
                self.facts.errors.pop(name, None)
        self.closed_early.clear()

    async def _rich_tls12(self) -> None:
        f = self.facts
        data, offer = h.client_hello(
            h.TLS12,
            h.ALL_TLS12,
            server_name=self.name,
            status_request=True,
            renegotiation_info=True,
            deflate=True,
        )
        got = await self._exchange("TLSv1.2", data, offer)
        if got is None:
            return
        answer, flight = got
        self._version_answer(h.TLS12, answer)
        if answer.verdict != "accepted":
            return
        f.served_chain = list(flight.certificates)
        f.secure_renegotiation = flight.secure_renegotiation
        f.compression = flight.compression not in (None, 0)
        if flight.ocsp is not None:
            f.stapled, f.ocsp_staple = True, flight.ocsp
        elif flight.hello_done:
            f.stapled = False

    async def _tls13(self) -> None:
        data, offer = h.tls13_client_hello(server_name=self.name)
        got = await self._exchange("TLSv1.3", data, offer)
        if got is None:
            return
        answer, flight = got
        self._version_answer(h.TLS13, answer)
        if answer.verdict == "accepted" and flight.key_share_group is not None:
            group = flight.key_share_group
            self.facts.tls13_group = h.GROUPS.get(group, f"0x{group:04X}")

    async def _version(self, version: int) -> None:
        data, offer = h.client_hello(
            version, h.ALL_TLS12, server_name=self.name, extensions=version != h.SSL3
        )
        got = await self._exchange(h.VERSION_NAMES[version], data, offer)
        if got is not None:
            self._version_answer(version, got[0])

    async def _sslv2(self) -> None:
        f = self.facts
        data, offer = h.sslv2_client_hello()
        got = await self._exchange("SSLv2", data, offer, sslv2=True)
        if got is None:
            return
        answer, flight = got
        if answer.verdict == "unknown":
            return
        f.protocols["SSLv2"] = answer.verdict == "accepted"
        for spec in flight.sslv2_ciphers or ():
            for cls in h.SSL2_CIPHERS[spec][1]:
                f.classes[cls] = True

    def _version_answer(self, version: int, answer: h.Answer) -> None:
        """Accepted at ``version``: True with its preferred suite. Accepted lower: ``version`` False and
        the lower one True (the server chose its best). Refused: False."""
        f = self.facts
        name = h.VERSION_NAMES[version]
        if answer.verdict == "refused":
            f.protocols[name] = False
        elif answer.verdict == "accepted" and answer.version is not None:
            chosen = h.VERSION_NAMES.get(answer.version)
            if chosen is None:
                return
            if answer.version != version:
                f.protocols[name] = False
            f.protocols[chosen] = True
            if answer.suite is not None:
                f.preferred.setdefault(chosen, h.suite_name(answer.suite))

    async def _eliminate(self, step: str, classes: Iterable[str]) -> None:
        """Hellos offering every suite of every class still unknown, best coverage first, until one is
        refused (all of them False) or every class is known."""
        f = self.facts
        for round_ in range(1, 8):
            remaining = {c for c in classes if f.classes[c] is None}
            if not remaining:
                return
            # Suites covering the most unknown classes first: a server that follows the client's order
            # answers several classes with one hello.
            members = [c for c in h.ALL_TLS12 if h.SUITES[c].classes & remaining]
            codes = sorted(members, key=lambda c: -len(h.SUITES[c].classes & remaining))
            answer = await self._hello(f"{step}{round_}", tuple(codes))
            if answer is None or answer.verdict == "unknown":
                return
            if answer.verdict == "refused":
                for c in remaining:
                    f.classes[c] = False
                return
            # accepted: _learn marked the chosen suite's classes True (at least one of ``remaining``)

    async def _hello(self, name: str, codes: tuple[int, ...]) -> h.Answer | None:
        """One TLS hello up to the highest version ≤ 1.2 known accepted (TLS 1.2 if none is known)."""
        f = self.facts
        version = next(
            (v for v in (h.TLS12, h.TLS11, h.TLS10, h.SSL3) if f.protocols[h.VERSION_NAMES[v]]), h.TLS12
        )
        data, offer = h.client_hello(version, codes, server_name=self.name, extensions=version != h.SSL3)
        got = await self._exchange(name, data, offer)
        return got[0] if got is not None else None

    # ---- one connection, one hello ----------------------------------------------------------------

    async def _exchange(
        self, name: str, data: bytes, offer: h.Offer, *, sslv2: bool = False
    ) -> tuple[h.Answer, h.Flight] | None:
        """Connect, get to TLS, send ``data``, read the first flight; None when nothing could be told
        (the reason goes to ``errors``). Every accepted answer teaches the classes of its suite."""
        f = self.facts
        rec = self.recorder
        if self.stopped is not None:
            f.errors[name] = f"not tried: {self.stopped}"
            return None
        if f.connections >= MAX_CONNECTIONS:
            f.errors[name] = f"not tried: connection budget of {MAX_CONNECTIONS} spent"
            return None
        f.connections += 1
        try:
            async with self._connection() as (reader, writer):
                rec.debug("C: tls-scan", f"{name} hello ({len(data)} bytes, {len(offer.suites)} suites)")
                writer.write(data)
                flight, closed = await self._read_flight(reader, writer, sslv2)
        except _Stop as exc:
            self.stopped = exc.message
            f.rate_limited = f.rate_limited or exc.rate_limited
            f.errors[name] = exc.message
            rec.debug("tls-scan:", f"{name}: stopped: {exc.message}")
            return None
        except _Unknown as exc:
            f.errors[name] = exc.message
            rec.debug("tls-scan:", f"{name}: unknown: {exc.message}")
            self.timeouts = self.timeouts + 1 if exc.timeout else 0
            if self.timeouts >= _TIMEOUTS_IN_A_ROW:
                self.stopped = f"{self.timeouts} hellos in a row unanswered"
            return None
        self.timeouts = 0
        if flight.server_hello or flight.alert is not None:
            self.answered = True
        silent = closed and not buf_seen(flight)
        if silent and not self.answered and name in PROTOCOLS:
            self.closed_early.append(name)  # refused or not, told once another hello is answered
        answer = h.judge(flight, offer, closed=closed, close_refuses=self.answered)
        if answer.verdict == "unknown":
            f.errors[name] = answer.why
        elif answer.verdict == "accepted":
            self._learn(answer, flight)
        rec.debug("S: tls-scan", f"{name}: {_describe(answer)}")
        return answer, flight

    def _learn(self, answer: h.Answer, flight: h.Flight) -> None:
        f = self.facts
        suite = h.SUITES.get(answer.suite) if answer.suite is not None else None
        if suite is None or suite.tls13:
            return
        for cls in suite.classes:
            f.classes[cls] = True
        if not suite.forward_secret:
            f.non_fs = True
        if suite.ffdhe:
            f.dhe = True
            if flight.dh_bits is not None and f.dh_bits is None:
                f.dh_bits = flight.dh_bits

    async def _read_flight(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sslv2: bool
    ) -> tuple[h.Flight, bool]:
        """The first flight, within one step timeout; (flight, closed-by-the-server)."""
        timeout = self.settings.timeout
        buf = b""
        eof = False
        try:
            async with asyncio.timeout(timeout):
                await writer.drain()
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        eof = True
                        break
                    buf += chunk
                    if len(buf) > h.MAX_FLIGHT:
                        raise _Unknown(f"first flight larger than {h.MAX_FLIGHT} bytes")
                    if h.parse_flight(buf, sslv2=sslv2).complete:
                        break
            return h.parse_flight(buf, eof=eof, sslv2=sslv2), eof
        except TimeoutError:
            raise _Unknown(f"no complete answer within {timeout:g}s", timeout=True) from None
        except h.HelloError as exc:
            raise _Unknown(f"unreadable answer: {exc}") from None
        except OSError as exc:
            raise _Unknown(f"connection lost: {exc.strerror or exc}") from None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A connection ready for a ClientHello: TCP, then the protocol's STARTTLS dialogue."""
        settings = self.settings
        ep = settings.endpoint
        try:
            sock = await tcp_connect(ep, reason="tls_connect", timeout=settings.timeout)
        except ProbeError as exc:  # ProbeTimeout included
            raise _Stop(exc.message) from None
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=_LIMITS.max_line + 2)
        except OSError as exc:
            sock.close()
            raise _Stop(f"connection lost: {exc}") from None
        try:
            if ep.tls_mode == "starttls":
                lines = BoundedReader(reader, _LIMITS, "tls_connect", read_timeout=settings.timeout)
                budget = _DIALOGUE_STEPS * settings.timeout  # a drip-fed banner cannot stretch it
                try:
                    async with asyncio.timeout(budget):
                        await _STARTTLS[settings.protocol](self, lines, writer)
                except TimeoutError:
                    raise _Stop(f"before TLS: no STARTTLS within {budget:g}s") from None
                except ProbeError as exc:  # a closed connection, an over-long line, garbage
                    raise _Stop(f"before TLS: {exc.message}") from None
                except OSError as exc:
                    raise _Stop(f"before TLS: connection lost: {exc}") from None
            yield reader, writer
        finally:
            writer.transport.abort()  # mid-handshake: nothing polite is left to say
            with contextlib.suppress(Exception):
                await close_writer(writer)

    # ---- the dialogues before TLS ------------------------------------------------------------------

    def _send(self, writer: asyncio.StreamWriter, proto: str, line: str) -> None:
        self.recorder.debug(f"C: {proto}", line)
        writer.write(line.encode("ascii") + b"\r\n")

    async def _smtp(self, lines: BoundedReader, writer: asyncio.StreamWriter) -> None:
        code, text = await self._smtp_reply(lines, "the banner")
        if code != 220:
            raise _Stop(f"SMTP banner {code} {show(text.encode())}", rate_limited=code == 421)
        self._send(writer, "smtp", f"EHLO {self.settings.helo_name or _local_name()}")
        code, text = await self._smtp_reply(lines, "EHLO")
        if code != 250:
            raise _Stop(f"SMTP EHLO answered {code} {show(text.encode())}", rate_limited=code == 421)
        if not any(line.upper().split(" ")[0] == "STARTTLS" for line in text.split("\n")[1:]):
            raise _Stop("SMTP server does not offer STARTTLS")
        self._send(writer, "smtp", "STARTTLS")
        code, text = await self._smtp_reply(lines, "STARTTLS")
        if code != 220:
            raise _Stop(f"SMTP STARTTLS answered {code} {show(text.encode())}", rate_limited=code == 421)

    async def _smtp_reply(self, lines: BoundedReader, what: str) -> tuple[int, str]:
        """A (multi-line) SMTP reply: its code and its lines' text joined by newlines."""
        texts: list[str] = []
        code = None
        for _ in range(_MAX_REPLY_LINES):
            raw = await lines.line(what)
            line = raw.decode("utf-8", errors="replace")
            self.recorder.debug("S: smtp", line)
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise _Stop(f"not an SMTP reply to {what}: {show(raw)}")
            if code is not None and int(line[:3]) != code:
                raise _Stop(f"SMTP reply to {what} changes its code mid-reply")
            code = int(line[:3])
            texts.append(line[4:])
            if line[3:4] != "-":
                return code, "\n".join(texts)
        raise _Stop(f"SMTP reply to {what} longer than {_MAX_REPLY_LINES} lines")

    async def _imap(self, lines: BoundedReader, writer: asyncio.StreamWriter) -> None:
        greeting = (await lines.line("the greeting")).decode("utf-8", errors="replace")
        self.recorder.debug("S: imap", greeting)
        status = (
            greeting.split(" ", 2)[1].upper() if greeting.startswith("* ") and " " in greeting[2:] else ""
        )
        if not greeting.startswith("* ") or status != "OK":
            raise _Stop(f"IMAP greeting {show(greeting.encode())}", rate_limited=status == "BYE")
        self._send(writer, "imap", "S1 STARTTLS")
        for _ in range(_MAX_REPLY_LINES):
            line = (await lines.line("STARTTLS")).decode("utf-8", errors="replace")
            self.recorder.debug("S: imap", line)
            if line.startswith("* BYE"):
                raise _Stop(f"IMAP server said {show(line.encode())}", rate_limited=True)
            if line.startswith("S1 "):
                if line[3:].upper().startswith("OK"):
                    return
                raise _Stop(f"IMAP STARTTLS answered {show(line.encode())}")
        raise _Stop(f"IMAP reply to STARTTLS longer than {_MAX_REPLY_LINES} lines")

    async def _pop3(self, lines: BoundedReader, writer: asyncio.StreamWriter) -> None:
        greeting = (await lines.line("the greeting")).decode("utf-8", errors="replace")
        self.recorder.debug("S: pop3", greeting)
        if not greeting.startswith("+OK"):
            raise _Stop(f"POP3 greeting {show(greeting.encode())}", rate_limited=greeting.startswith("-ERR"))
        self._send(writer, "pop3", "STLS")
        line = (await lines.line("STLS")).decode("utf-8", errors="replace")
        self.recorder.debug("S: pop3", line)
        if not line.startswith("+OK"):
            raise _Stop(f"POP3 STLS answered {show(line.encode())}")


_STARTTLS: Final[dict[str, Callable[[_Scanner, BoundedReader, asyncio.StreamWriter], Awaitable[None]]]] = {
    "smtp": _Scanner._smtp,
    "imap": _Scanner._imap,
    "pop3": _Scanner._pop3,
}


def buf_seen(flight: h.Flight) -> bool:
    """Anything at all was read for this hello (a message, an alert, an SSLv2 reply)."""
    return bool(flight.messages) or flight.alert is not None or flight.sslv2_ciphers is not None


def _local_name() -> str:
    import socket

    return socket.gethostname() or "localhost"


def _describe(answer: h.Answer) -> str:
    if answer.verdict == "accepted":
        version = h.VERSION_NAMES.get(answer.version or 0, "?")
        suite = h.suite_name(answer.suite) if answer.suite is not None else ""
        return f"accepted {version} {suite}".rstrip()
    return f"{answer.verdict} ({answer.why})"


# ---- remembering scans ---------------------------------------------------------------------------------

MAX_ENDPOINTS: Final = 4096


@dataclass(frozen=True)
class _Kept:
    facts: ScanFacts
    fingerprint: str | None


class ScanCache:
    """Scans remembered per endpoint (bounded LRU, like ``probes.tls.legacy.LegacyCache``): reused until
    ``every`` seconds old or until the leaf certificate's fingerprint changes; a scan with an unknown
    (:attr:`ScanFacts.complete` false) is not kept, so the next run asks again."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = MAX_ENDPOINTS) -> None:
        self._kept: OrderedDict[tuple[str, ...], _Kept] = OrderedDict()
        self.clock = clock
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._kept)

    def fresh(
        self, key: tuple[str, ...], fingerprint: str | None, every: float = DEFAULT_RESCAN
    ) -> ScanFacts | None:
        """The remembered scan if it may be reused now, else None (scan again)."""
        kept = self._kept.get(key)
        if kept is None or kept.facts.checked_at is None:
            return None
        if kept.fingerprint != fingerprint or self.clock() - kept.facts.checked_at >= every:
            return None
        self._kept.move_to_end(key)
        return kept.facts

    def put(self, key: tuple[str, ...], facts: ScanFacts, fingerprint: str | None) -> bool:
        """Remember a complete scan (True), or forget the endpoint's old one (False)."""
        if not facts.complete:
            self._kept.pop(key, None)
            return False
        self._kept[key] = _Kept(facts, fingerprint)
        self._kept.move_to_end(key)
        while len(self._kept) > self.max_entries:
            self._kept.popitem(last=False)
        return True


def scan_key(settings: TLSCheckSettings) -> tuple[str, ...]:
    """The cache key of one scanned endpoint (the settings' ``cache_scope``, address, protocol, mode, SNI
    name)."""
    ep = settings.endpoint
    return (*settings.cache_scope, ep.address, settings.protocol, ep.tls_mode, ep.server_hostname)
