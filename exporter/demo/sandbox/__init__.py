"""A sandbox mail server for ``mailcanary demo`` and for tests: SMTP, IMAP and POP3 over TLS on loopback.

It lives under ``exporter/`` on purpose: the probe library (``probes/``) must never depend on it. It needs
aiosmtpd and pymap (pinned in pyproject.toml, as pymap's internals are used).
"""

from __future__ import annotations

from exporter.demo.sandbox.ca import SandboxPKI, make_pki
from exporter.demo.sandbox.pop3 import POP3Server
from exporter.demo.sandbox.server import DEMO_USER, Listener, Sandbox

__all__ = ["DEMO_USER", "Listener", "POP3Server", "Sandbox", "SandboxPKI", "make_pki"]
