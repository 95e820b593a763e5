"""The domain's reports as others send them: TLS-RPT (RFC 8460) and DMARC aggregate (RFC 7489 appendix
C) reports read from the mailbox their ``rua`` points at. Pure parsers (:mod:`.tlsrpt`, :mod:`.dmarc`),
bounded unpacking of hostile attachments (:mod:`.unpack`), the once-only state (:mod:`.state`) and the
IMAP reader on top of :class:`probes.clients.imap.IMAPSession` (:mod:`.mailbox`)."""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.reports.dmarc import (
        DISPOSITION_LABELS,
        POLICIES,
        UNKNOWN,
        DMARCReport,
        Published,
        Record,
        classify,
        parse_dmarc,
    )
    from probes.reports.mailbox import (
        SKIP_REASONS,
        Event,
        ReportsResult,
        ReportsSettings,
        imap_day,
        ingest,
        probe_reports,
        shown,
    )
    from probes.reports.state import (
        OTHER,
        Counted,
        ReportState,
        Rules,
        domain_label,
        load_state,
        org_label,
        save_state,
    )
    from probes.reports.tlsrpt import (
        POLICY_TYPES,
        RESULT_LABELS,
        RESULT_TYPES,
        Failure,
        PolicyResult,
        TLSReport,
        parse_tlsrpt,
    )
    from probes.reports.unpack import (
        ERROR_KINDS,
        ERROR_REASONS,
        KINDS,
        Attachment,
        Limits,
        ReportError,
        attachments,
        gunzip,
        unpack,
        unzip,
    )

__all__ = [
    "DISPOSITION_LABELS",
    "ERROR_KINDS",
    "ERROR_REASONS",
    "KINDS",
    "OTHER",
    "POLICIES",
    "POLICY_TYPES",
    "RESULT_LABELS",
    "RESULT_TYPES",
    "SKIP_REASONS",
    "UNKNOWN",
    "Attachment",
    "Counted",
    "DMARCReport",
    "Event",
    "Failure",
    "Limits",
    "PolicyResult",
    "Published",
    "Record",
    "ReportError",
    "ReportState",
    "ReportsResult",
    "ReportsSettings",
    "Rules",
    "TLSReport",
    "attachments",
    "classify",
    "domain_label",
    "gunzip",
    "imap_day",
    "ingest",
    "load_state",
    "org_label",
    "parse_dmarc",
    "parse_tlsrpt",
    "probe_reports",
    "save_state",
    "shown",
    "unpack",
    "unzip",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "dmarc": "DISPOSITION_LABELS POLICIES UNKNOWN DMARCReport Published Record classify parse_dmarc",
            "mailbox": "SKIP_REASONS Event ReportsResult ReportsSettings imap_day ingest probe_reports shown",
            "state": "OTHER Counted ReportState Rules domain_label load_state org_label save_state",
            "tlsrpt": "POLICY_TYPES RESULT_LABELS RESULT_TYPES Failure PolicyResult TLSReport parse_tlsrpt",
            "unpack": (
                "ERROR_KINDS ERROR_REASONS KINDS Attachment Limits ReportError attachments gunzip unpack"
                " unzip"
            ),
        },
    )
