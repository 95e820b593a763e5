"""``--web.config.file`` in the Prometheus exporter-toolkit format: TLS, client certificates, basic auth.

Same file as node_exporter and blackbox_exporter read, so one secured-scrape setup serves them all.
Applied to every endpoint. Unknown keys are errors, as in the main config.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

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
        import bcrypt  # only with a web config: `run` without one never loads it

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


BCRYPT_WORKERS = 2  # threads checking passwords: bcrypt is slow by design and must not run on the loop
BCRYPT_QUEUE = 32  # checks that may wait for a thread; beyond that a request gets 503 at once
NEGATIVE_CACHE = 1024  # refused credentials remembered (a repeated wrong password costs no bcrypt)
POSITIVE_CACHE = 64  # accepted credentials remembered apart, so a flood of wrong ones cannot evict them
_DEFAULT_COST = 10


def _cost(hashed: str) -> int:
    try:
        return int(hashed.split("$")[2])
    except (IndexError, ValueError):
        return _DEFAULT_COST


class PasswordChecker:
    """Basic-auth checks off the event loop, in a small bounded pool, cached on the presented
    credentials (a keyed digest, never the password). An unknown user is checked against a dummy hash
    of the same cost, so the answer time does not tell which user names exist."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {u.encode(): h.encode() for u, h in users.items()}
        cost = max((_cost(h) for h in users.values()), default=_DEFAULT_COST)
        import bcrypt  # only with basic auth: `run` without it never loads it

        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self._key = secrets.token_bytes(32)
        self._pool = ThreadPoolExecutor(max_workers=BCRYPT_WORKERS, thread_name_prefix="mailcanary-bcrypt")
        self._accepted: OrderedDict[bytes, None] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._pending = 0

    @staticmethod
    def _check(password: bytes, hashed: bytes) -> bool:
        try:
            import bcrypt  # loaded by __init__ already: a dictionary look-up

            return bool(bcrypt.checkpw(password, hashed))
        except ValueError:  # never a 500: an unusable hash simply lets nobody in
            return False

    async def check(self, header: str) -> bool | None:
        """True/False, or None when too many checks are already waiting (the caller answers 503)."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            return False
        user, sep, password = raw.partition(b":")
        if not sep:
            return False
        digest = hmac.new(self._key, raw, hashlib.sha256).digest()
        for cache, answer in ((self._accepted, True), (self._refused, False)):
            if digest in cache:
                cache.move_to_end(digest)
                return answer
        if self._pending >= BCRYPT_WORKERS + BCRYPT_QUEUE:
            return None
        hashed = self.users.get(user)
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._pool, self._check, password, hashed or self._dummy)
        finally:
            self._pending -= 1
        ok = ok and hashed is not None
        cache, size = (self._accepted, POSITIVE_CACHE) if ok else (self._refused, NEGATIVE_CACHE)
        cache[digest] = None
        while len(cache) > size:
            cache.popitem(last=False)
        return ok


def middleware(cfg: WebConfig) -> Middleware:
    """Basic auth (see PasswordChecker) and extra headers."""
    checker = PasswordChecker(cfg.basic_auth_users) if cfg.basic_auth_users else None

    @web.middleware
    async def secure(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = True if checker is None else await checker.check(request.headers.get("Authorization", ""))
        resp: web.StreamResponse
        if allowed is None:
            resp = web.Response(status=503, text="too many password checks in progress; retry\n")
            resp.headers["Retry-After"] = "1"
        elif not allowed:
            resp = web.Response(status=401, text="Unauthorized\n")
            resp.headers["WWW-Authenticate"] = 'Basic realm="mailcanary"'
        else:
            resp = await handler(request)
        for name, value in cfg.http_server_config.headers.items():
            resp.headers[name] = value
        return resp

    return secure
