"""``--web.config.file`` in the Prometheus exporter-toolkit format: TLS, client certificates, basic auth.

Same file as node_exporter and blackbox_exporter read, so one secured-scrape setup serves them all.
Applied to every endpoint. Unknown keys are errors, as in the main config.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import Field, ValidationError

from .config import ConfigError, Model, _problems, load_yaml, read_text_capped

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
    data = load_yaml(read_text_capped(path), path) or {}  # size-capped, duplicate keys refused
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{path}: (top level): must be a mapping (tls_server_config, basic_auth_users, ...)"]
        )
    try:
        cfg = WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(path, exc)) from None
    problems = []
    for user, hashed in cfg.basic_auth_users.items():
        if not _valid_bcrypt(hashed):
            problems.append(
                f"{path}: basic_auth_users.{user}: not a bcrypt hash (make one with htpasswd -nBC 10 {user})"
            )
    tls = cfg.tls_server_config
    if tls is not None:
        for key in ("cert_file", "key_file", "client_ca_file"):
            name = getattr(tls, key)
            if name is not None and not os.access(name, os.R_OK):
                problems.append(f"{path}: tls_server_config.{key}: cannot read {name}")
        if not problems:
            try:
                server_context(tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                problems.append(f"{path}: tls_server_config: {getattr(exc, 'strerror', None) or exc}")
    if problems:
        raise ConfigError(problems)
    return cfg


def _valid_bcrypt(hashed: str) -> bool:
    """A hash bcrypt can check against (a mangled one would make every request fail at check time)."""
    if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
        return False
    try:
        bcrypt.checkpw(b"", hashed.encode())
    except ValueError:
        return False
    return True


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
        try:
            ok = bcrypt.checkpw(password.encode(), hashed.encode())
        except ValueError:  # never a 500: an unusable hash simply lets nobody in
            return False
        if ok:
            cache.add(key)
        return ok

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
