"""The HTTP side: the server and its routes (server), the web config with TLS and basic auth
(webconfig), the multi-target ``/probe`` endpoint (multitarget) and the status page (status).
"""

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
