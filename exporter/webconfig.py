"""``--web.config.file`` in the Prometheus exporter-toolkit format: TLS, client certificates, basic auth.

Same file as node_exporter and blackbox_exporter read, so one secured-scrape setup serves them all.
Applied to every endpoint. Unknown keys are errors, as in the main config.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import bcrypt
import yaml
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import Field, ValidationError

from .config import ConfigError, Model, _problems

ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}


class TLSServerConfig(Model):
    cert_file: str
    key_file: str
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: str | None = None
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] | None = None


class HTTPServerConfig(Model):
    headers: dict[str, str] = {}


class WebConfig(Model):
    tls_server_config: TLSServerConfig | None = None
    basic_auth_users: dict[str, str] = Field(default_factory=dict)
    http_server_config: HTTPServerConfig = HTTPServerConfig()


def load_web_config(path: str) -> WebConfig:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError([f"{path}: (file): cannot read: {exc.strerror or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: (top level): invalid YAML: {str(exc).splitlines()[0]}"]) from None
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(path, exc)) from None
    problems = []
    for user, hashed in cfg.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            problems.append(f"{path}: basic_auth_users.{user}: not a bcrypt hash (htpasswd -nBC 10 user)")
    if cfg.tls_server_config is not None:
        try:
            server_context(cfg.tls_server_config)
        except (OSError, ssl.SSLError, ValueError) as exc:
            problems.append(f"{path}: tls_server_config: {getattr(exc, 'strerror', None) or exc}")
    if problems:
        raise ConfigError(problems)
    return cfg


def server_context(tls: TLSServerConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    if tls.max_version:
        ctx.maximum_version = _VERSIONS[tls.max_version]
    if tls.client_auth_type != "NoClientCert":
        if tls.client_ca_file:
            ctx.load_verify_locations(tls.client_ca_file)
        elif tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
            raise ValueError(f"client_auth_type {tls.client_auth_type} needs client_ca_file")
        required = tls.client_auth_type in ("RequireAnyClientCert", "RequireAndVerifyClientCert")
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return ctx


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(cfg: WebConfig) -> Middleware:
    """Basic auth (bcrypt, with successful checks cached: bcrypt is slow by design) and extra headers."""
    cache: set[tuple[str, bytes]] = set()

    def allowed(header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = cfg.basic_auth_users.get(user)
        if not sep or hashed is None:
            return False
        key = (user, hashlib.sha256(f"{hashed}\0{password}".encode()).digest())
        if key in cache:
            return True
        if bcrypt.checkpw(password.encode(), hashed.encode()):
            cache.add(key)
            return True
        return False

    @web.middleware
    async def secure(request: web.Request, handler: Handler) -> web.StreamResponse:
        if cfg.basic_auth_users and not allowed(request.headers.get("Authorization", "")):
            resp: web.StreamResponse = web.Response(status=401, text="Unauthorized\n")
            resp.headers["WWW-Authenticate"] = 'Basic realm="mailcanary"'
        else:
            resp = await handler(request)
        for name, value in cfg.http_server_config.headers.items():
            resp.headers[name] = value
        return resp

    return secure
