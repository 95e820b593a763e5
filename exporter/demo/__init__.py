"""``mailcanary demo``: the command (command) and the in-process sandbox mail server (sandbox, which needs
the ``demo`` extra: aiosmtpd and pymap; imported only when the demo runs, never from here).
"""

from exporter.demo.command import main

__all__ = ["main"]
