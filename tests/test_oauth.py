"""OAuth token sources, SASL strings, masking and config keys (the real logins are in test_oauth_e2e.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from exporter.config import ConfigError, parse_config
from exporter.kinds.roundtrip import roundtrip_settings
from exporter.run.runner import make_masker
from probes.auth.oauth import (
    MAX_RESPONSE_BYTES,
    FileToken,
    GrantToken,
    OAuthError,
    choose_mechanism,
    error_of_challenge,
    reuse_window,
    sasl_initial,
    secret_forms,
)
from probes.recorder import MASK, Masker

F = "/etc/mailcanary/test.yml"


def test_sasl_strings_follow_the_specs() -> None:
    # XOAUTH2: Google's documented example; OAUTHBEARER: RFC 7628 §4.1 (with host and port)
    assert sasl_initial(
        "XOAUTH2", "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    ) == (b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01")
    assert sasl_initial(
        "OAUTHBEARER",
        "user@example.com",
        "vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg",
        "server.example.com",
        143,
    ) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer "
        b"vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert sasl_initial("OAUTHBEARER", "a,b=c", "t").startswith(b"n,a=a=2Cb=3Dc,")


def test_mechanism_is_chosen_from_the_offer() -> None:
    assert choose_mechanism(["PLAIN", "XOAUTH2", "OAUTHBEARER"]) == "OAUTHBEARER"
    assert choose_mechanism(["plain", "xoauth2"]) == "XOAUTH2"
    assert choose_mechanism(["PLAIN", "XOAUTH2", "OAUTHBEARER"], "xoauth2") == "XOAUTH2"
    assert choose_mechanism(["PLAIN", "LOGIN"]) is None
    assert choose_mechanism(["XOAUTH2"], "oauthbearer") is None


def test_error_challenge_is_decoded_and_bounded() -> None:
    blob = base64.b64encode(json.dumps({"status": "invalid_token", "schemes": "bearer"}).encode())
    assert error_of_challenge(blob) == "status=invalid_token schemes=bearer"
    assert error_of_challenge(b"not base64 !!") == ""
    assert error_of_challenge(base64.b64encode(b"[1]")) == ""


def test_masker_hides_every_sasl_form_and_keeps_only_recent_tokens() -> None:
    masker = Masker()
    for n in range(50):
        masker.rotate("oauth:u@example.com", secret_forms("u@example.com", f"tok-{n}-secret", "h", 993))
    for form in secret_forms("u@example.com", "tok-49-secret", "h", 993):
        assert masker(f"x {form} y") == f"x {MASK} y"
    assert masker("tok-48-secret") == MASK  # the previous one may still be in flight
    assert masker("tok-10-secret") == "tok-10-secret"  # bounded: old generations dropped
    assert len(masker._needles) <= 2 * len(secret_forms("u@example.com", "t", "h", 993))


def test_masker_rotation_keeps_a_form_that_is_also_a_fixed_secret_or_another_accounts() -> None:
    masker = Masker(["shared-secret"])
    masker.rotate("oauth:a", ["shared-secret", "tok-a-1"])
    masker.rotate("oauth:b", ["tok-b-1", "tok-a-1"])  # the same string under another key
    for n in range(2, 5):
        masker.rotate("oauth:a", [f"tok-a-{n}"])
    assert masker("shared-secret tok-a-1 tok-a-4 tok-a-2") == f"{MASK} {MASK} {MASK} tok-a-2"


async def test_file_token_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    source = FileToken(str(path))
    assert await source.token() == "first-token"
    path.write_text("second-token-longer\n")
    os.utime(path, ns=(1, 2))
    assert await source.token() == "second-token-longer"
    path.write_text("two words\n")
    os.utime(path, ns=(3, 4))
    with pytest.raises(OAuthError, match="not a single token"):
        await source.token()
    path.write_bytes(b"x" * 20000)
    with pytest.raises(OAuthError, match="limit"):
        await source.token()
    path.unlink()
    with pytest.raises(OAuthError, match="No such file"):
        await source.token()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _serve(handler: Handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/token", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/token"


async def test_grant_caches_refreshes_ahead_and_follows_rotation() -> None:
    seen: list[dict[str, str]] = []
    now = [1000.0]

    async def token(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        seen.append(form)
        return web.json_response(
            {"access_token": f"at-{len(seen)}", "expires_in": 3600, "refresh_token": f"rt-{len(seen) + 1}"}
        )

    runner, url = await _serve(token)
    try:
        told: list[str] = []
        src = GrantToken(
            url, "cid", "csecret", "rt-1", ("s1", "s2"), clock=lambda: now[0], on_secret=told.append
        )
        assert await src.token() == "at-1"
        assert seen[0] == {
            "grant_type": "refresh_token",
            "client_id": "cid",
            "client_secret": "csecret",
            "refresh_token": "rt-1",
            "scope": "s1 s2",
        }
        now[0] += 2800  # cached: before 80 % of the lifetime
        assert await src.token() == "at-1" and len(seen) == 1
        now[0] += 100  # past 80 % of the lifetime: refreshed ahead of expiry, with the rotated refresh token
        assert await src.token() == "at-2"
        assert seen[1]["refresh_token"] == "rt-2"
        assert told == ["at-1", "rt-2", "at-2", "rt-3"]
        src.invalidate()  # a server refused it
        assert await src.token() == "at-3"
    finally:
        await runner.cleanup()


def test_reuse_window_is_a_fraction_of_every_lifetime() -> None:
    assert reuse_window(3600) == 2880  # 80 %
    assert reuse_window(300) == 240
    assert reuse_window(100) == 80  # was 40 (60 s before expiry)
    assert reuse_window(20) == 15  # was 0: a request per login; now refreshed 5 s ahead of expiry
    assert reuse_window(60) == 48  # was 0
    assert reuse_window(5) == 0 and reuse_window(0) == 0 and reuse_window(-3) == 0


async def test_short_lived_token_is_reused_over_a_simulated_window() -> None:
    """Issue 19: a 20 s token was never reused (a request per login). A run every 5 s for 50 s, SMTP and
    IMAP logging in at once each run (one source, as both sides of a probe share it): a token request
    every 15 s, and every token handed out has at least 5 s of life left. Simulated clock, no sleeps."""
    issued: list[float] = []
    now = [5000.0]

    async def token(request: web.Request) -> web.Response:
        issued.append(now[0])
        return web.json_response({"access_token": f"at-{len(issued)}", "expires_in": 20})

    runner, url = await _serve(token)
    try:
        src = GrantToken(url, "cid", "s", None, clock=lambda: now[0])
        handed: list[tuple[float, str]] = []
        for run in range(10):
            now[0] = 5000.0 + 5 * run
            # both logins start together; the second one waits while the first one's request is out
            for got in await asyncio.gather(src.token(), src.token()):
                handed.append((now[0], got))
        assert [t - 5000.0 for t in issued] == [0, 15, 30, 45]  # was 20: one per login
        for at, got in handed:
            fetched = issued[int(got.split("-")[1]) - 1]
            assert at - fetched <= 20 - 5, (at, got)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("lifetime", [3600, 20, 3])
async def test_concurrent_logins_share_one_request(lifetime: int) -> None:
    """Logins waiting while a request is in flight take its token, even one too short-lived to be
    reused later (3 s): one request, not one each."""
    seen: list[int] = []
    arrived, gate = asyncio.Event(), asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        seen.append(1)
        arrived.set()
        await gate.wait()  # every login is waiting now
        return web.json_response({"access_token": f"at-{len(seen)}", "expires_in": lifetime})

    runner, url = await _serve(token)
    try:
        src = GrantToken(url, "cid", "s", None, clock=lambda: 100.0)
        logins = [asyncio.create_task(src.token()) for _ in range(5)]
        await arrived.wait()
        gate.set()
        assert await asyncio.gather(*logins) == ["at-1"] * 5
        assert len(seen) == 1
        src.invalidate()  # the server refused it: the next login fetches anew
        assert await src.token() == "at-2"
    finally:
        await runner.cleanup()


async def test_grant_errors_are_one_line_and_bounded() -> None:
    mode = ["error"]

    async def token(request: web.Request) -> web.StreamResponse:
        if mode[0] == "error":
            return web.json_response(
                {"error": "invalid_client", "error_description": "bad secret"}, status=401
            )
        if mode[0] == "huge":
            return web.Response(body=b'{"a": "' + b"x" * (MAX_RESPONSE_BYTES + 10) + b'"}')
        if mode[0] == "html":
            return web.Response(text="<html>oops</html>", status=502)
        await asyncio.sleep(5)
        return web.json_response({})

    runner, url = await _serve(token)
    try:
        src = GrantToken(url, "cid", "s3cr3t", None, timeout=1.0)
        with pytest.raises(OAuthError, match=r"invalid_client \(bad secret\)") as info:
            await src.token()
        assert "s3cr3t" not in str(info.value)
        mode[0] = "huge"
        with pytest.raises(OAuthError, match="reply over"):
            await src.token()
        mode[0] = "html"
        with pytest.raises(OAuthError, match="HTTP 502, reply is not a JSON object"):
            await src.token()
        mode[0] = "stall"
        with pytest.raises(OAuthError, match="no reply within 1s"):
            await src.token()
    finally:
        await runner.cleanup()


def _config(receive_extra: str, protocol: str = "imap") -> str:
    return f"""\
roundtrip:
  - name: oa
    sender: canary@example.com
    recipient: inbox@example.net
    smtp:
      host: smtp.example.com
    receive:
      protocol: {protocol}
      host: imap.example.net
      tls: implicit
      username: inbox@example.net
{receive_extra}"""


def _problem(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, F, environ or {})
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_oauth_config_loads_and_secrets_are_masked(tmp_path: Path) -> None:
    rt = tmp_path / "rt"
    rt.write_text("1//refresh-secret\n")
    text = _config(
        "      oauth:\n        token_url: https://login.example/token\n        client_id: cid\n"
        f"        client_secret_env: CS\n        refresh_token_file: {rt}\n        scopes: [a, b]\n"
    )
    loaded = parse_config(text, F, {"CS": "client-secret-value"})
    settings = roundtrip_settings(loaded, loaded.config.roundtrip[0], b"k" * 32)
    creds = settings.receiver.credentials
    assert isinstance(creds.token_source, GrantToken)
    assert creds.token_source.refresh_token == "1//refresh-secret"
    assert creds.token_source.client_secret == "client-secret-value"
    again = roundtrip_settings(loaded, loaded.config.roundtrip[0], b"k" * 32)
    assert again.receiver.credentials.token_source is creds.token_source  # cached token outlives a run
    masker = make_masker(loaded)
    assert masker("1//refresh-secret client-secret-value") == f"{MASK} {MASK}"
    assert "refresh-secret" not in repr(loaded) and "client-secret-value" not in repr(loaded)


@pytest.mark.parametrize(
    ("extra", "env", "expected"),
    [
        (
            "      password: x\n      oauth:\n        token_file: /t\n",
            {},
            "roundtrip[0].receive.oauth: not with password (a login is a password or a token)",
        ),
        (
            "      oauth:\n        token_file: /t\n        token_url: https://x/t\n",
            {},
            "roundtrip[0].receive.oauth: give exactly one of token_file, token_url",
        ),
        (
            "      oauth:\n        token_url: https://x/t\n",
            {},
            "roundtrip[0].receive.oauth: token_url needs client_id",
        ),
        (
            "      oauth:\n        token_file: /t\n        scopes: [a]\n",
            {},
            "roundtrip[0].receive.oauth.token_file: not with scopes (those need token_url)",
        ),
        (
            "      oauth:\n        token_url: https://x/t\n        client_id: c\n"
            "        client_secret_env: NOPE\n",
            {},
            "roundtrip[0].receive.oauth.client_secret_env: environment variable NOPE is not set or empty",
        ),
        (
            "      oauth:\n        mechanism: cram\n        token_file: /t\n",
            {},
            "roundtrip[0].receive.oauth.mechanism: must be 'auto', 'xoauth2' or 'oauthbearer'",
        ),
    ],
)
def test_oauth_config_errors_are_one_line(extra: str, env: dict[str, str], expected: str) -> None:
    assert _problem(_config(extra), env) == f"{F}: {expected}"


def test_oauth_over_pop3_loads() -> None:
    loaded = parse_config(_config("      oauth:\n        token_file: /t\n", protocol="pop3"), F, {})
    probe = loaded.config.roundtrip[0]
    assert probe.receive.protocol == "pop3" and probe.receive.oauth is not None
    assert loaded.token_source(probe, "receive") is not None
