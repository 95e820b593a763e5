"""OAuth 2.0 logins against the real Dovecot (``passdb oauth2``) and Postfix (SASL through that Dovecot).

The authorization server is a small aiohttp app on loopback written for these tests: a token endpoint
(refresh-token and client-credentials grants) and an RFC 7662 introspection endpoint that Dovecot asks.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter import logs
from exporter.config import load_config
from exporter.run.results import ResultStore, RunResult
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from probes.auth.oauth import GrantToken, sasl_initial
from tests.mailstack import MailStack
from tests.mailstack._net import free_ports, wait_ready
from tests.support.stackconfig import roundtrip, secret_file, write_config

KEY = b"oauth-test-key-0123456789abcdef"
CLIENT_ID = "mailcanary-test"
CLIENT_SECRET = "cl1ent-S3cret-oauth"


@dataclass
class AuthServer:
    """Tokens it issued, their owners and whether they still count; requests seen per grant."""

    users: dict[str, str] = field(default_factory=dict)  # refresh token -> username
    client_user: str = ""  # the mailbox the client-credentials grant is for
    access: dict[str, str] = field(default_factory=dict)  # live access token -> username
    revoked: set[str] = field(default_factory=set)
    expires_in: int = 3600
    pad: int = 0  # extra characters in issued tokens (real JWTs are 1-4 KiB)
    grants: list[str] = field(default_factory=list)
    introspections: int = 0
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = str(form.get("grant_type", ""))
        self.grants.append(grant)
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return web.json_response({"error": "invalid_client"}, status=401)
        if grant == "refresh_token":
            rt = str(form.get("refresh_token", ""))
            if rt in self.revoked or rt not in self.users:
                return web.json_response(
                    {"error": "invalid_grant", "error_description": "Token has been expired or revoked."},
                    status=400,
                )
            user = self.users[rt]
        elif grant == "client_credentials":
            user = self.client_user
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = f"ya29.at-{next(self.counter)}-{user.split('@')[0]}-{'x' * self.pad}Zq9"
        self.access[token] = user
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    async def introspect(self, request: web.Request) -> web.Response:
        self.introspections += 1
        form = await request.post()
        token = str(form.get("token", ""))
        user = self.access.get(token)
        if user is None:
            return web.json_response({"active": False})
        return web.json_response({"active": "true", "username": user})

    def expire(self, token: str) -> None:
        self.access.pop(token, None)


@dataclass
class OAuthStack:
    server: AuthServer
    imaps_port: int
    submission_port: int
    pop3s_port: int


@pytest.fixture(scope="module")
def oauth_stack(mailstack: MailStack) -> Iterator[OAuthStack]:
    server = AuthServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/token", server.token)
        app.router.add_post("/introspect", server.introspect)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server.port = runner.addresses[0][1]
        runner_box.append(runner)
        started.set()

    thread = threading.Thread(
        target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True
    )
    thread.start()
    assert started.wait(10)
    conf = mailstack.root / "oauth2.conf.ext"
    conf.write_text(
        f"introspection_mode = post\nintrospection_url = {server.url}/introspect\n"
        "tokeninfo_url =\nforce_introspection = yes\nusername_attribute = username\n"
        "active_attribute = active\nactive_value = true\n"
    )
    conf.chmod(0o644)
    imaps, submission, pop3s = free_ports(3)
    pf = mailstack.make_postfix("oauth-postfix", tls=mailstack.tls, ports={"submission": submission})
    dv = mailstack.make_dovecot(
        "oauth-dovecot",
        tls=mailstack.tls,
        ports={"imaps": imaps, "pop3s": pop3s},
        auth_sockets=[pf.sasl_socket],
        settings={"auth_mechanisms": "plain login xoauth2 oauthbearer"},
        extra_passdbs=[
            "passdb {",
            "  driver = oauth2",
            "  mechanisms = xoauth2 oauthbearer",
            f"  args = {conf}",
            "}",
        ],
    )
    try:
        pf.render()
        dv.render()
        dv.check()
        dv.start()
        pf.start()
        pending = wait_ready([*dv.endpoints(), *pf.endpoints()], 20)
        assert not pending, mailstack.log_tails()
        yield OAuthStack(server=server, imaps_port=imaps, submission_port=submission, pop3s_port=pop3s)
    finally:
        pf.stop()
        dv.stop()

        async def cleanup() -> None:
            for r in runner_box:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _oauth_probe(
    stack: MailStack,
    o: OAuthStack,
    tmp: Path,
    name: str,
    address: str,
    refresh_token: str | None,
    protocol: str = "imap",
    **oauth: Any,
) -> dict[str, Any]:
    probe = roundtrip(
        stack, tmp, name, address, protocol=protocol, receive_tls="implicit", smtp_tls="starttls"
    )
    probe["smtp"]["port"] = o.submission_port
    probe["receive"]["port"] = o.imaps_port if protocol == "imap" else o.pop3s_port
    settings: dict[str, Any] = {
        "token_url": f"{o.server.url}/token",
        "client_id": CLIENT_ID,
        "client_secret_file": secret_file(tmp, f"{name}-cs", CLIENT_SECRET),
        "scopes": ["https://mail.example/.default"],
        **oauth,
    }
    if refresh_token is not None:
        settings["refresh_token_file"] = secret_file(tmp, f"{name}-rt", refresh_token)
    for side in ("smtp", "receive"):
        del probe[side]["password_file"]
        probe[side]["oauth"] = dict(settings)
    return probe


def _runner(tmp: Path, probes: list[dict[str, Any]]) -> Runner:
    key_file = tmp / "canary.key"
    key_file.write_bytes(KEY)
    loaded = load_config(str(write_config(tmp, probes, canary_key_file=str(key_file))))
    return Runner(
        loaded=loaded,
        key=KEY,
        ledger=Ledger(tmp / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )


def _run(runner: Runner, name: str, debug: bool = True) -> RunResult:
    probe = next(p for p in runner.loaded.config.roundtrip if p.name == name)
    return asyncio.run(runner.run_entry(probe, debug=debug))


def _text(result: RunResult) -> str:
    return "\n".join(result.transcript or [])


@pytest.mark.parametrize("pad", [0, 2000])
@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_oauth_roundtrip_over_smtp_and_imap(
    mailstack: MailStack,
    oauth_stack: OAuthStack,
    mailbox: str,
    tmp_path: Path,
    mechanism: str,
    pad: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """pad 2000: a JWT-sized token, whose SMTP initial response would pass Postfix's 2048-octet line limit,
    follows the empty 334 challenge."""
    oauth_stack.server.pad = pad
    rt = f"1//rt-{mechanism}-{pad}-{mailbox}"
    oauth_stack.server.users[rt] = mailbox
    runner = _runner(
        tmp_path, [_oauth_probe(mailstack, oauth_stack, tmp_path, "oa", mailbox, rt, mechanism=mechanism)]
    )
    logs.configure("json", "debug")
    logs.set_masker(runner.masker)
    try:
        result = _run(runner, "oa")
        for token in [t for t, u in oauth_stack.server.access.items() if u == mailbox]:
            oauth_stack.server.expire(token)  # ours, and any an earlier test left for this mailbox
        refused = _run(runner, "oa")  # the server no longer takes the cached token: refused, logged
    finally:
        logs.configure("json", "info")
        oauth_stack.server.pad = 0
    assert result.success, (result.reason, result.message, _text(result))
    assert (refused.success, refused.reason) == (False, "receive_auth")  # IMAP logs in first (its sweep)
    # Dovecot's SASL error challenge, decoded: "... answered NO ... [status=invalid_token]"
    assert f"AUTHENTICATE {mechanism.upper()} answered NO" in refused.message
    expected = {"xoauth2": "[status=401 schemes=bearer", "oauthbearer": "[status=invalid_token"}[mechanism]
    assert expected in refused.message, refused.message
    healed = _run(runner, "oa")  # the refused token was forgotten: a fresh one is fetched
    assert healed.success, (healed.reason, healed.message)
    out = capsys.readouterr()
    text = _text(result) + _text(refused) + refused.message + out.out + out.err
    inline = f"C: smtp AUTH {mechanism.upper()} ********" in text
    after_challenge = f"C: smtp AUTH {mechanism.upper()}\n" in text and "C: smtp ********" in text
    assert (inline, after_challenge) == ((True, False) if pad == 0 else (False, True)), text
    assert f"AUTHENTICATE {mechanism.upper()}" in text
    for token in oauth_stack.server.access:
        assert token not in text
        for mech in ("XOAUTH2", "OAUTHBEARER"):
            assert base64.b64encode(sasl_initial(mech, mailbox, token)).decode() not in text  # type: ignore[arg-type]
    assert rt not in text and CLIENT_SECRET not in text


def test_client_credentials_grant_and_token_cached_then_refreshed_ahead_of_expiry(
    mailstack: MailStack, oauth_stack: OAuthStack, mailbox: str, tmp_path: Path
) -> None:
    """Issue 19: a token living 20 s was fetched anew for every login. Now one request serves every
    login of a run (IMAP sweep, SMTP, IMAP), the next run reuses it, and after 80 % of its life (the
    source's clock is simulated, no sleep) it is fetched again ahead of expiry."""
    server = oauth_stack.server
    server.client_user = mailbox
    server.expires_in = 20
    try:
        runner = _runner(tmp_path, [_oauth_probe(mailstack, oauth_stack, tmp_path, "cc", mailbox, None)])
        probe = next(p for p in runner.loaded.config.roundtrip if p.name == "cc")
        source = runner.loaded.token_source(probe, "smtp")
        assert isinstance(source, GrantToken)
        assert runner.loaded.token_source(probe, "receive") is source  # both sides share one token
        now = [1000.0]
        source.clock = lambda: now[0]
        before = len(server.grants)
        first = _run(runner, "cc")
        assert first.success, (first.reason, first.message, _text(first))
        assert server.grants[before:] == ["client_credentials"]  # one token for SMTP and IMAP alike
        issued = [t for t, u in server.access.items() if u == mailbox]
        now[0] += 10
        second = _run(runner, "cc")
        assert second.success and len(server.grants) == before + 1  # cached
        now[0] += 6  # 16 s: past 80 % of the lifetime, still inside it
        for token in issued:
            server.expire(token)  # the server's side of the lifetime ends too
        third = _run(runner, "cc")
        assert third.success, (third.reason, third.message, _text(third))
        assert len(server.grants) == before + 2
    finally:
        server.expires_in = 3600


def test_revoked_refresh_token_is_receive_auth_with_the_oauth_error(
    mailstack: MailStack, oauth_stack: OAuthStack, mailbox: str, tmp_path: Path
) -> None:
    rt = f"1//rt-revoked-{mailbox}"
    oauth_stack.server.users[rt] = mailbox
    oauth_stack.server.revoked.add(rt)
    probe = _oauth_probe(mailstack, oauth_stack, tmp_path, "rv", mailbox, rt)
    # SMTP with the mailbox password (Dovecot's passwd-file passdb still serves PLAIN), IMAP with OAuth.
    probe["smtp"].pop("oauth")
    probe["smtp"]["password_file"] = secret_file(tmp_path, "rv-smtp", mailstack.password(mailbox))
    runner = _runner(tmp_path, [probe])
    result = _run(runner, "rv")
    assert not result.success
    assert result.reason == "receive_auth"
    assert "invalid_grant" in result.message and "revoked" in result.message
    assert rt not in _text(result) + result.message


def test_revoked_refresh_token_on_smtp_is_smtp_auth(
    mailstack: MailStack, oauth_stack: OAuthStack, mailbox: str, tmp_path: Path
) -> None:
    rt = f"1//rt-revoked2-{mailbox}"
    oauth_stack.server.users[rt] = mailbox
    oauth_stack.server.revoked.add(rt)
    probe = _oauth_probe(mailstack, oauth_stack, tmp_path, "rs", mailbox, rt)
    # The receiving side logs in first (its sweep): give it the password, so SMTP meets the refusal.
    probe["receive"].pop("oauth")
    probe["receive"]["password_file"] = secret_file(tmp_path, "rs-recv", mailstack.password(mailbox))
    runner = _runner(tmp_path, [probe])
    result = _run(runner, "rs")
    assert (result.success, result.reason) == (False, "smtp_auth")
    assert "invalid_grant" in result.message


def test_token_file_is_reread_when_another_program_replaces_it(
    mailstack: MailStack, oauth_stack: OAuthStack, mailbox: str, tmp_path: Path
) -> None:
    server = oauth_stack.server
    first, second = f"file-token-1-{mailbox}", f"file-token-2-{mailbox}"
    server.access[first] = mailbox
    token_file = tmp_path / "access.token"
    token_file.write_text(first + "\n")
    probe = roundtrip(mailstack, tmp_path, "tf", mailbox, protocol="imap", receive_tls="implicit")
    probe["smtp"]["port"] = oauth_stack.submission_port
    probe["receive"]["port"] = oauth_stack.imaps_port
    for side in ("smtp", "receive"):
        del probe[side]["password_file"]
        probe[side]["oauth"] = {"token_file": str(token_file)}
    runner = _runner(tmp_path, [probe])
    grants = len(server.grants)
    one = _run(runner, "tf")
    assert one.success, (one.reason, one.message, _text(one))
    server.expire(first)
    server.access[second] = mailbox
    replacement = tmp_path / "access.token.new"
    replacement.write_text(second + "\n")
    replacement.replace(token_file)  # as a sidecar would: a new file renamed into place
    two = _run(runner, "tf")
    assert two.success, (two.reason, two.message, _text(two))
    assert len(server.grants) == grants  # no token endpoint involved
    assert first not in _text(one) and second not in _text(two)


@pytest.mark.parametrize("pad", [0, 2000])
@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
def test_oauth_roundtrip_over_pop3(
    mailstack: MailStack,
    oauth_stack: OAuthStack,
    mailbox: str,
    tmp_path: Path,
    mechanism: str,
    pad: int,
) -> None:
    """RFC 5034 AUTH on Dovecot's pop3: a short token goes inline, a JWT-sized one does not fit the
    255-octet command line and follows an empty challenge; a token the server no longer takes is
    receive_auth with Dovecot's decoded error."""
    rt = f"1//rt-pop3-{mechanism}-{pad}-{mailbox}"
    oauth_stack.server.users[rt] = mailbox
    probe = _oauth_probe(mailstack, oauth_stack, tmp_path, "op", mailbox, rt, "pop3", mechanism=mechanism)
    runner = _runner(tmp_path, [probe])
    before = len(oauth_stack.server.grants)
    oauth_stack.server.pad = pad
    try:
        result = _run(runner, "op")
    finally:
        oauth_stack.server.pad = 0
    assert result.success, (result.reason, result.message, _text(result))
    assert len(oauth_stack.server.grants) == before + 1  # one token for SMTP and every POP3 session
    text = _text(result)
    inline = f"C: pop3 AUTH {mechanism.upper()} ********\n" in text + "\n"
    after_challenge = f"C: pop3 AUTH {mechanism.upper()}\n" in text and "C: pop3 ********" in text
    assert (inline, after_challenge) == ((True, False) if pad == 0 else (False, True)), text
    for token in [t for t, u in oauth_stack.server.access.items() if u == mailbox]:
        oauth_stack.server.expire(token)  # ours, and any an earlier test left for this mailbox
    refused = _run(runner, "op")
    assert (refused.success, refused.reason) == (False, "receive_auth")  # POP3 logs in first (its sweep)
    assert f"POP3 AUTH {mechanism.upper()} refused: -ERR" in refused.message
    expected = {"xoauth2": "[status=401 schemes=bearer", "oauthbearer": "[status=invalid_token"}[mechanism]
    assert expected in refused.message, refused.message
    healed = _run(runner, "op")
    assert healed.success, (healed.reason, healed.message)
    text += _text(refused) + refused.message + _text(healed)
    for token in oauth_stack.server.access:
        assert token not in text
        for mech in ("XOAUTH2", "OAUTHBEARER"):
            assert base64.b64encode(sasl_initial(mech, mailbox, token)).decode() not in text  # type: ignore[arg-type]
    assert rt not in text and CLIENT_SECRET not in text
