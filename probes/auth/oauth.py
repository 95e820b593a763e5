"""OAuth 2.0 for mail logins: token sources and the SASL strings of XOAUTH2 and OAUTHBEARER (RFC 7628).

Big providers (Microsoft 365, Gmail) refuse or discourage passwords, so a probe logs in with a bearer
token. A token comes from a :class:`TokenSource`: a file written by something else (re-read when it
changes), or a grant (refresh-token or client-credentials) against a token endpoint, cached until
shortly before it expires. Every request is bounded (timeout, request and response size) and a failure
is a :class:`OAuthError` whose message carries the endpoint's ``error``/``error_description``; the
protocol clients turn it into ``smtp_auth`` / ``receive_auth``. Tokens are secrets: callers add
:func:`secret_forms` of each token to the masker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from probes.auth.credentials import Credentials
from probes.errors import ProbeError, Reason
from probes.recorder import Recorder

MAX_TOKEN_BYTES = 16 * 1024  # a JWT access token is 1-4 KiB; a file or reply bigger than this is wrong
MAX_RESPONSE_BYTES = 64 * 1024
REUSE_FRACTION = 0.8  # a token is reused for this share of its lifetime, then fetched again
MIN_AHEAD = 5.0  # ... and refreshed at least this long before it expires
DEFAULT_LIFETIME = 300.0  # a reply without expires_in: assume 5 minutes
MAX_LIFETIME = 86400.0  # an expires_in beyond a day (or not a number) is not believed

Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]
MECHANISMS: tuple[Mechanism, ...] = ("OAUTHBEARER", "XOAUTH2")  # preference: the standard one first


class OAuthError(Exception):
    """Getting a token failed; the message is one line, safe to show (no token, no secret)."""


def choose_mechanism(offered: Iterable[str], wanted: str = "auto") -> Mechanism | None:
    """The SASL mechanism to use among ``offered`` (case-insensitive): ``wanted`` or, for ``auto``,
    OAUTHBEARER before XOAUTH2; None if the server offers neither."""
    have = {m.upper() for m in offered}
    for mech in MECHANISMS:
        if (wanted == "auto" or wanted.upper() == mech) and mech in have:
            return mech
    return None


def sasl_initial(mechanism: Mechanism, username: str, token: str, host: str = "", port: int = 0) -> bytes:
    """The client's first SASL message (not base64-encoded)."""
    if mechanism == "XOAUTH2":
        return f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    gs2 = "n,a=" + username.replace("=", "=3D").replace(",", "=2C") + ","
    kv = f"\x01auth=Bearer {token}\x01"
    if host:
        kv = f"\x01host={host}\x01port={port}" + kv
    return f"{gs2}{kv}\x01".encode()


def secret_forms(username: str, token: str, host: str = "", port: int = 0) -> list[str]:
    """The token as it may appear on the wire: raw and every SASL initial response, base64-encoded."""
    forms = [token]
    for mech in MECHANISMS:
        for h, p in ((host, port), ("", 0)):
            forms.append(base64.b64encode(sasl_initial(mech, username, token, h, p)).decode())
    return forms


def error_of_challenge(challenge: bytes) -> str:
    """The server's SASL error challenge (base64 JSON ``{"status": ..}``) as a short text."""
    try:
        data = json.loads(base64.b64decode(challenge.strip(), validate=True)[:4096])
    except (ValueError, TypeError):
        return ""
    if not isinstance(data, dict):
        return ""
    return " ".join(f"{k}={str(v)[:80]}" for k, v in list(data.items())[:4])


def _read_head(path: str, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


@dataclass
class FileToken:
    """An access token kept in a file by another program (a sidecar, a cron job); re-read on change."""

    path: str
    _key: tuple[int, int, int] | None = field(default=None, init=False, repr=False)
    _token: str = field(default="", init=False, repr=False)

    async def token(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise OAuthError(f"token file {self.path}: {exc.strerror or exc}") from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key or not self._token:
            if st.st_size > MAX_TOKEN_BYTES:
                raise OAuthError(f"token file {self.path}: {st.st_size} bytes (limit {MAX_TOKEN_BYTES})")
            try:
                raw = await asyncio.to_thread(_read_head, self.path, MAX_TOKEN_BYTES + 1)
            except OSError as exc:
                raise OAuthError(f"token file {self.path}: {exc.strerror or exc}") from None
            text = raw.decode("utf-8", errors="replace").strip()
            if not text or len(raw) > MAX_TOKEN_BYTES or any(c.isspace() for c in text):
                raise OAuthError(f"token file {self.path}: empty or not a single token")
            self._token, self._key = text, key
        return self._token

    def invalidate(self) -> None:
        self._key = None


@dataclass
class GrantToken:
    """An access token from a token endpoint (RFC 6749 §4.4 client credentials, §6 refresh token).

    Reused until :func:`reuse_window` of its lifetime has passed, then fetched again ahead of expiry.
    One request at a time: logins that wait for it while it is in flight take the token it brings (even
    one too short-lived to be reused later), so concurrent logins never make a request each."""

    token_url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)  # None: client-credentials grant
    scopes: Sequence[str] = ()
    timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    on_secret: Callable[[str], None] | None = None  # told of every new token / rotated refresh token
    _token: str = field(default="", init=False, repr=False)
    _refresh_at: float = field(default=0.0, init=False, repr=False)  # reused until then
    _expires_at: float = field(default=0.0, init=False, repr=False)  # the endpoint's own expiry
    _fetches: int = field(default=0, init=False, repr=False)
    _lock: asyncio.Lock | None = field(default=None, init=False, repr=False)

    @property
    def grant(self) -> str:
        return "refresh_token" if self.refresh_token is not None else "client_credentials"

    def invalidate(self) -> None:
        self._refresh_at = self._expires_at = 0.0

    async def token(self) -> str:
        if self._token and self.clock() < self._refresh_at:
            return self._token
        if self._lock is None:
            self._lock = asyncio.Lock()
        fetches = self._fetches
        async with self._lock:
            now = self.clock()
            if self._token and now < self._refresh_at:
                return self._token  # another login refreshed it meanwhile
            if self._token and self._fetches != fetches and now < self._expires_at:
                return self._token  # fetched while we waited for it: that request was ours too
            await self._fetch()
        return self._token

    async def _fetch(self) -> None:
        form = {"grant_type": self.grant, "client_id": self.client_id}
        if self.client_secret is not None:
            form["client_secret"] = self.client_secret
        if self.refresh_token is not None:
            form["refresh_token"] = self.refresh_token
        if self.scopes:
            form["scope"] = " ".join(self.scopes)
        started = self.clock()
        status, data = await self._post(form)
        if status != 200 or "access_token" not in data:
            err = str(data.get("error", "") or f"HTTP {status}")[:80]
            desc = str(data.get("error_description", ""))[:200]
            why = f"{err} ({desc})" if desc else err
            raise OAuthError(f"token refresh failed at {self.token_url}: {why}")
        token = data["access_token"]
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise OAuthError(f"token refresh failed at {self.token_url}: no usable access_token")
        lifetime = data.get("expires_in", DEFAULT_LIFETIME)
        try:
            seconds = float(lifetime) if isinstance(lifetime, int | float | str) else DEFAULT_LIFETIME
        except ValueError:
            seconds = DEFAULT_LIFETIME
        if seconds != seconds or seconds > MAX_LIFETIME:  # NaN, inf, absurd
            seconds = DEFAULT_LIFETIME
        seconds = max(0.0, seconds)
        if self.on_secret is not None:
            self.on_secret(token)
        rotated = data.get("refresh_token")
        if self.refresh_token is not None and isinstance(rotated, str) and rotated:
            if self.on_secret is not None:
                self.on_secret(rotated)
            self.refresh_token = rotated  # providers may rotate it (Microsoft does)
        self._token = token
        self._refresh_at = started + reuse_window(seconds)
        self._expires_at = started + seconds
        self._fetches += 1

    async def _post(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
                session.post(
                    self.token_url,
                    data=form,
                    headers={"Accept": "application/json"},
                    allow_redirects=False,
                ) as resp,
            ):
                body = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except TimeoutError:
            raise OAuthError(f"token endpoint {self.token_url}: no reply within {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise OAuthError(f"token endpoint {self.token_url}: {type(exc).__name__}: {exc}"[:300]) from None
        if len(body) > MAX_RESPONSE_BYTES:
            raise OAuthError(f"token endpoint {self.token_url}: reply over {MAX_RESPONSE_BYTES} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise OAuthError(f"token endpoint {self.token_url}: HTTP {status}, reply is not a JSON object")
        return status, data


def reuse_window(lifetime: float) -> float:
    """Seconds a token living ``lifetime`` seconds is reused: 80 % of its life, and at least
    :data:`MIN_AHEAD` before it expires (a 1-hour token 48 minutes, a 20 s token 15 s, one of 5 s or
    less not at all). Counted from when it was requested, so the request's own time is inside."""
    return max(0.0, min(lifetime * REUSE_FRACTION, lifetime - MIN_AHEAD))


async def initial_response(
    creds: Credentials,
    offered: Iterable[str],
    recorder: Recorder,
    reason: Reason,
    proto: str,
    host: str = "",
    port: int = 0,
) -> tuple[Mechanism, str]:
    """(mechanism, base64 initial response) for an OAuth login, the token's forms added to the masker.

    No common mechanism, or a token that cannot be had, is ``reason`` (``smtp_auth``/``receive_auth``)
    with the OAuth error in the message.
    """
    assert creds.token_source is not None
    offered = list(offered)
    mech = choose_mechanism(offered, creds.mechanism)
    if mech is None:
        shown = " ".join(sorted(m.upper() for m in offered)) or "none"
        want = creds.mechanism.upper() if creds.mechanism != "auto" else "XOAUTH2 or OAUTHBEARER"
        raise ProbeError(f"{proto} server offers no {want} (offered: {shown})", reason=reason)
    try:
        token = await creds.token_source.token()
    except OAuthError as exc:
        raise ProbeError(f"{proto} OAuth: {exc}", reason=reason) from None
    recorder.masker.rotate(f"oauth:{creds.username}", secret_forms(creds.username, token, host, port))
    return mech, base64.b64encode(sasl_initial(mech, creds.username, token, host, port)).decode()
