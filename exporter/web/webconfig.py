"""``--web.config.file`` in the Prometheus exporter-toolkit format: TLS, client certificates, basic auth.

Same file as node_exporter and blackbox_exporter read, so one secured-scrape setup serves them all.
Applied to every endpoint. Unknown keys are errors, as in the main config.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import math
import os
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import Field, ValidationError

from exporter.config import ConfigError, Model, load_yaml, read_text_capped, validation_problems

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
        raise ConfigError(validation_problems(path, exc)) from None
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
BCRYPT_QUEUE = 32  # checks that may wait for a thread at most (a memory bound; the wait bound is below)
# A request with credentials not yet cached is answered (200/401) or refused (503) within this long,
# whatever the machine's load: it is admitted only if the checks ahead of it should be done by then
# (measured mean bcrypt time), and a queued check not started by then is dropped and answered 503.
MAX_AUTH_WAIT = 1.0
NEGATIVE_CACHE = 1024  # refused credentials remembered (a repeated wrong password costs no bcrypt)
POSITIVE_CACHE = 64  # accepted credentials remembered apart, so a flood of wrong ones cannot evict them
_DEFAULT_COST = 10
_MEAN_WEIGHT = 0.2  # weight of the newest bcrypt time in the running mean (follows the load in ~5 checks)


def _cost(hashed: str) -> int:
    try:
        return int(hashed.split("$")[2])
    except (IndexError, ValueError):
        return _DEFAULT_COST


class PasswordChecker:
    """Basic-auth checks off the event loop, in a small bounded pool, cached on the presented
    credentials (a keyed digest, never the password). An unknown user is checked against a dummy hash
    of the same cost, so the answer time does not tell which user names exist.

    The bound is on the wait, not only on the count: admission by expected wait (checks pending *
    running mean bcrypt time / threads, plus one check) against ``MAX_AUTH_WAIT``, and a deadline on
    each queued check. A check that started before its deadline runs to its end even if its request was
    already answered 503, and its answer is cached: the client's retry is then answered at once."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = {u.encode(): h.encode() for u, h in users.items()}
        cost = max((_cost(h) for h in users.values()), default=_DEFAULT_COST)
        import bcrypt  # only with basic auth: `run` without it never loads it

        started = time.perf_counter()
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self.mean = time.perf_counter() - started  # seconds per check: hashing costs what checking does
        self._key = secrets.token_bytes(32)
        self._pool = ThreadPoolExecutor(max_workers=BCRYPT_WORKERS, thread_name_prefix="mailcanary-bcrypt")
        self._accepted: OrderedDict[bytes, None] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._pending = 0  # checks submitted and not finished (running, queued, or dropped in the queue)

    @staticmethod
    def _check(password: bytes, hashed: bytes) -> bool:
        try:
            import bcrypt  # loaded by __init__ already: a dictionary look-up

            return bool(bcrypt.checkpw(password, hashed))
        except ValueError:  # never a 500: an unusable hash simply lets nobody in
            return False

    @classmethod
    def _timed(cls, password: bytes, hashed: bytes, deadline: float) -> tuple[bool, float] | None:
        """On a pool thread: the check and its time, or None (not run) once its request was refused."""
        started = time.monotonic()
        if started >= deadline:
            return None
        ok = cls._check(password, hashed)
        return ok, time.monotonic() - started

    def expected_wait(self) -> float:
        """Seconds until a check submitted now should be done: the checks ahead of it, spread over the
        threads, then its own."""
        ahead = max(0, self._pending - BCRYPT_WORKERS + 1)
        return ahead * self.mean / BCRYPT_WORKERS + self.mean

    def retry_after(self) -> int:
        """Whole seconds after which a refused client may find a thread free (at least 1)."""
        return max(1, math.ceil(self._pending * self.mean / BCRYPT_WORKERS))

    async def check(self, header: str) -> bool | None:
        """True/False, or None when it could not be checked within ``MAX_AUTH_WAIT`` (answer 503)."""
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
        cached = self._cached(digest)
        if cached is not None:
            return cached
        if self._pending >= BCRYPT_WORKERS + BCRYPT_QUEUE:
            return None
        # A free thread always takes the check (even when one check takes longer than the bound: its
        # answer is then cached for the retry); otherwise only if it should be done in time.
        if self._pending >= BCRYPT_WORKERS and self.expected_wait() > MAX_AUTH_WAIT:
            return None
        hashed = self.users.get(user)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool | None] = loop.create_future()
        deadline = time.monotonic() + MAX_AUTH_WAIT
        job = self._pool.submit(self._timed, password, hashed or self._dummy, deadline)
        self._pending += 1
        job.add_done_callback(
            lambda done: _on_loop(loop, self._finish, done, digest, hashed is not None, answer)
        )
        try:
            async with asyncio.timeout(MAX_AUTH_WAIT):
                return await asyncio.shield(answer)
        except TimeoutError:
            job.cancel()  # still queued: it never runs (if it started, its answer is cached when done)
            return None

    def _cached(self, digest: bytes) -> bool | None:
        for cache, answer in ((self._accepted, True), (self._refused, False)):
            if digest in cache:
                cache.move_to_end(digest)
                return answer
        return None

    def _finish(
        self,
        job: Future[tuple[bool, float] | None],
        digest: bytes,
        known: bool,
        answer: asyncio.Future[bool | None],
    ) -> None:
        """On the loop, when a check ended (ran, dropped past its deadline, or cancelled in the queue)."""
        self._pending -= 1
        outcome = None if job.cancelled() or job.exception() is not None else job.result()
        if outcome is None:
            if not answer.done():
                answer.set_result(None)  # not checked: the request is (or was already) answered 503
            return
        ok, took = outcome
        self.mean += _MEAN_WEIGHT * (took - self.mean)
        ok = ok and known
        cache, size = (self._accepted, POSITIVE_CACHE) if ok else (self._refused, NEGATIVE_CACHE)
        cache[digest] = None
        while len(cache) > size:
            cache.popitem(last=False)
        if not answer.done():
            answer.set_result(ok)


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: object) -> None:
    """Hand a pool thread's result to the loop; after shutdown (loop closed) there is no one to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn, *args)


def middleware(cfg: WebConfig) -> Middleware:
    """Basic auth (see PasswordChecker) and extra headers."""
    checker = PasswordChecker(cfg.basic_auth_users) if cfg.basic_auth_users else None

    @web.middleware
    async def secure(request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed = True if checker is None else await checker.check(request.headers.get("Authorization", ""))
        resp: web.StreamResponse
        if allowed is None:
            assert checker is not None
            resp = web.Response(
                status=503, text="too many password checks in progress to answer in time; retry\n"
            )
            resp.headers["Retry-After"] = str(checker.retry_after())
        elif not allowed:
            resp = web.Response(status=401, text="Unauthorized\n")
            resp.headers["WWW-Authenticate"] = 'Basic realm="mailcanary"'
        else:
            resp = await handler(request)
        for name, value in cfg.http_server_config.headers.items():
            resp.headers[name] = value
        return resp

    return secure
