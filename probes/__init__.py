"""Protocol probes for mail systems: a library with no knowledge of the daemon that schedules it.

Shared by every probe, here at the top: the failure reasons and :class:`ProbeError` (errors), the
:class:`Recorder` a probe writes its facts into (recorder), the :class:`ProbeContext` every probe kind
gets beside its settings (context) and the signed canary (canary). Each concern
has its package: ``wire`` (connections, framing, DNS, TLS facts, slots), ``auth``, ``clients`` (SMTP, IMAP,
POP3), ``receipt`` (what the receiver did), ``roundtrip``, ``tls`` and ``domain``.
"""

from probes.context import ProbeContext
from probes.errors import REASONS, ProbeError, ProbeTimeout
from probes.recorder import Masker, Recorder

__all__ = ["REASONS", "Masker", "ProbeContext", "ProbeError", "ProbeTimeout", "Recorder"]
