"""TLS-RPT and DMARC aggregate reports built to their RFCs by the tests (RFC 8460 §4 JSON, RFC 7489
appendix C XML), mailed as reporters mail them (RFC 8460 §5.3, RFC 7489 §7.2.1.1), and hostile ones: a
zip bomb, a gzip bomb, an XML with entities."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid
from typing import Any

from probes.reports import RESULT_TYPES

DAY = 86400
DAY0 = 1_796_428_800  # 2026-12-04T00:00:00Z: a whole UTC day (tests shift it to fall in their window)


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Policy:
    domain: str = "example.test"
    type: str = "sts"
    ok: int = 100
    failed: int | None = None  # None: the sum of the failures
    failures: Sequence[tuple[str, int, str]] = ()  # (result-type, count, receiving MX)


def tlsrpt(
    org: str, report_id: str, begin: float, policies: Sequence[Policy], *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An RFC 8460 §4 report (the example of §4.5, in shape)."""
    doc: dict[str, Any] = {
        "organization-name": org,
        "date-range": {"start-datetime": iso(begin), "end-datetime": iso(begin + DAY - 1)},
        "contact-info": "smtp-tls-reporting@" + org.lower().replace(" ", "") + ".example",
        "report-id": report_id,
        "policies": [
            {
                "policy": {
                    "policy-type": p.type,
                    "policy-string": [
                        "version: STSv1",
                        "mode: enforce",
                        "mx: mx.example.test",
                        "max_age: 86400",
                    ]
                    if p.type == "sts"
                    else [],
                    "policy-domain": p.domain,
                    "mx-host": ["mx.example.test"],
                },
                "summary": {
                    "total-successful-session-count": p.ok,
                    "total-failure-session-count": p.failed
                    if p.failed is not None
                    else sum(n for _, n, _ in p.failures),
                },
                "failure-details": [
                    {
                        "result-type": rt,
                        "sending-mta-ip": "192.0.2.25",
                        "receiving-mx-hostname": mx,
                        "receiving-ip": "198.51.100.7",
                        "failed-session-count": n,
                        "additional-information": "https://reports.example/why",
                    }
                    for rt, n, mx in p.failures
                ],
            }
            for p in policies
        ],
    }
    doc.update(extra or {})
    return doc


def every_result_type(mx: str = "mx.example.test") -> list[tuple[str, int, str]]:
    """One failure detail per RFC 8460 result type, counts 1..11, and one type no RFC names (other)."""
    return [(rt, i + 1, mx) for i, rt in enumerate(RESULT_TYPES)] + [("x-new-type", 5, mx)]


@dataclass
class Row:
    ip: str
    count: int
    disposition: str = "none"
    dkim: str = "pass"
    spf: str = "pass"
    header_from: str = "example.test"


def dmarc_xml(
    org: str,
    report_id: str,
    begin: float,
    rows: Sequence[Row],
    *,
    domain: str = "example.test",
    p: str = "reject",
    sp: str | None = "quarantine",
    pct: int = 100,
    namespace: str | None = None,
) -> bytes:
    """An RFC 7489 appendix C aggregate report."""
    recs = "".join(
        f"<record><row><source_ip>{r.ip}</source_ip><count>{r.count}</count><policy_evaluated>"
        f"<disposition>{r.disposition}</disposition><dkim>{r.dkim}</dkim><spf>{r.spf}</spf>"
        f"</policy_evaluated></row><identifiers><header_from>{r.header_from}</header_from></identifiers>"
        f"<auth_results><dkim><domain>{r.header_from}</domain><result>{r.dkim}</result></dkim>"
        f"<spf><domain>{r.header_from}</domain><result>{r.spf}</result></spf></auth_results></record>"
        for r in rows
    )
    ns = f' xmlns="{namespace}"' if namespace else ""
    sp_el = f"<sp>{sp}</sp>" if sp else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<feedback{ns}><report_metadata><org_name>{org}</org_name>'
        f"<email>dmarc@{org.lower().replace(' ', '')}.example</email><report_id>{report_id}</report_id>"
        f"<date_range><begin>{int(begin)}</begin><end>{int(begin + DAY - 1)}</end></date_range>"
        f"</report_metadata><policy_published><domain>{domain}</domain><adkim>r</adkim><aspf>r</aspf>"
        f"<p>{p}</p>{sp_el}<pct>{pct}</pct></policy_published>{recs}</feedback>\n"
    ).encode()


def zipped(data: bytes, name: str = "report.xml") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes as gzip, compressed in a stream (the bomb is never held whole here either)."""
    co = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1024 * 1024)
    parts = []
    left = size
    while left > 0:
        parts.append(co.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(co.flush())
    return b"".join(parts)


def zip_bomb(size: int, name: str = "report.xml") -> bytes:
    """One entry of ``size`` bytes of '<' (deflated ~1000:1), whatever the declared sizes say."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(name, "w", force_zip64=True) as out:
        chunk = b"<" * (1024 * 1024)
        left = size
        while left > 0:
            out.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
    return buf.getvalue()


ENTITY_XML = (
    b'<?xml version="1.0"?>\n<!DOCTYPE feedback [<!ENTITY a "aaaaaaaaaa">'
    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>\n<feedback><report_metadata><org_name>&c;</org_name>'
    b"</report_metadata></feedback>\n"
)
XXE_XML = (
    b'<?xml version="1.0"?>\n<!DOCTYPE feedback [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    b"<feedback><report_metadata><org_name>&x;</org_name></report_metadata></feedback>\n"
)


@dataclass
class Mail:
    subject: str
    parts: list[tuple[bytes, str, str]] = field(default_factory=list)  # (data, media type, file name)
    sender: str = "noreply-reports@reporter.example"
    to: str = "rua@example.test"


def mail(m: Mail) -> bytes:
    """A report mail: a short text part, then the report attachment(s), base64."""
    msg = MIMEMultipart("mixed")
    msg["From"] = m.sender
    msg["To"] = m.to
    msg["Subject"] = m.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="reporter.example")
    msg.attach(MIMEText("This is an aggregate report.\n"))
    for data, media, name in m.parts:
        main, sub = media.split("/", 1)
        part = MIMEApplication(data, _subtype=sub) if main == "application" else MIMEApplication(data)
        if main != "application":
            part.replace_header("Content-Type", media)
        part.add_header("Content-Disposition", "attachment", filename=name)
        msg.attach(part)
    return msg.as_bytes()


def tlsrpt_mail(
    doc: dict[str, Any], *, media: str = "application/tlsrpt+gzip", raw: bytes | None = None
) -> bytes:
    """A TLS-RPT mail (RFC 8460 §5.3): gzip by default; ``application/tlsrpt+json`` or the pre-RFC
    ``application/tlsrpt`` plain."""
    body = raw if raw is not None else json.dumps(doc).encode()
    gz = media == "application/tlsrpt+gzip"
    name = f"{doc.get('organization-name', 'x')}!example.test!{doc.get('report-id', 'x')}.json" + (
        ".gz" if gz else ""
    )
    return mail(
        Mail(
            f"Report Domain: example.test Submitter: x Report-ID: <{doc.get('report-id')}>",
            [(gzipped(body) if gz else body, media, name)],
        )
    )


def dmarc_mail(xml: bytes, *, how: str = "zip", name: str | None = None) -> bytes:
    """A DMARC aggregate mail: zip (Google, Microsoft), gzip (Yahoo and others) or plain XML."""
    if how == "zip":
        return mail(
            Mail(
                "Report domain: example.test",
                [(zipped(xml, name or "r.xml"), "application/zip", (name or "r") + ".zip")],
            )
        )
    if how == "gzip":
        return mail(
            Mail("Report domain: example.test", [(gzipped(xml), "application/gzip", name or "r.xml.gz")])
        )
    return mail(Mail("Report domain: example.test", [(xml, "text/xml", name or "r.xml")]))
