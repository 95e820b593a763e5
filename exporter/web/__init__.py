"""The HTTP side: the server and its routes (server), the web config with TLS and basic auth
(webconfig), the multi-target ``/probe`` endpoint (multitarget) and the status page (status).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from exporter.web.multitarget import probe_handler
    from exporter.web.server import HEADER_TIMEOUT, HTTPServer, parse_listen, render
    from exporter.web.status import phase_bar, render_status, sparkline
    from exporter.web.webconfig import WebConfig, load_web_config

__all__ = [
    "HEADER_TIMEOUT",
    "HTTPServer",
    "WebConfig",
    "load_web_config",
    "parse_listen",
    "phase_bar",
    "probe_handler",
    "render",
    "render_status",
    "sparkline",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "multitarget": "probe_handler",
            "server": "HEADER_TIMEOUT HTTPServer parse_listen render",
            "status": "phase_bar render_status sparkline",
            "webconfig": "WebConfig load_web_config",
        },
    )
