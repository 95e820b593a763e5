"""POP3 logins: USER/PASS, AUTH PLAIN and RFC 5034 OAuth (XOAUTH2/OAUTHBEARER), and LOGIN-DELAY
(RFC 2449 section 6.5): a refusal says why by its response code, and :class:`LoginGate` keeps logins as
far apart as the server asks, across every run of the process."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Final

from probes.auth.credentials import Credentials
from probes.auth.oauth import error_of_challenge, initial_response
from probes.clients.pop3.connection import MAX_COMMAND, POP3Connection
from probes.clients.pop3.parse import (
    AUTH,
    LOGIN_DELAY,
    is_continuation,
    login_refusal_reason,
    parse_login_delay,
    sasl_plain,
)
from probes.errors import ProbeError
from probes.recorder import MASK
from probes.wire.net import Endpoint


class LoginGate:
    """Per server and account: the LOGIN-DELAY it announced and when we last logged in, so that no login
    comes sooner than the server allows, across the runs of every probe in this process.

    Times are ``time.monotonic()``. Bounded: the least recently used entries beyond MAX_ENTRIES are
    forgotten (the worst that does is one login refused with ``[LOGIN-DELAY]``, which is reported as such).
    """

    MAX_ENTRIES: Final = 1024
    MARGIN: Final = 1.0  # seconds on top of the delay: the server measures from its own clock, in seconds

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[int | None, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: tuple[str, str]) -> tuple[int | None, float | None]:
        entry = self._entries.get(key, (None, None))
        if key in self._entries:
            self._entries.move_to_end(key)
        return entry

    def _put(self, key: tuple[str, str], entry: tuple[int | None, float | None]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)

    def delay(self, key: tuple[str, str]) -> int | None:
        """The delay last announced (0: announced none), or None if never learned."""
        with self._lock:
            return self._get(key)[0]

    def learn(self, key: tuple[str, str], seconds: int) -> None:
        with self._lock:
            self._put(key, (seconds, self._get(key)[1]))

    def note_login(self, key: tuple[str, str], at: float | None = None) -> None:
        """A login is being attempted now (refused ones count too: some servers count them)."""
        with self._lock:
            self._put(key, (self._get(key)[0], time.monotonic() if at is None else at))

    def allowed_at(self, key: tuple[str, str]) -> float:
        """The earliest monotonic time of the next login (0.0: at once)."""
        with self._lock:
            delay, last = self._get(key)
        if not delay or last is None:
            return 0.0
        return last + delay + self.MARGIN


LOGIN_GATE: Final = LoginGate()  # the process's one gate: every run of every probe shares it


def login_key(endpoint: Endpoint, username: str) -> tuple[str, str]:
    """A LOGIN-DELAY applies per server and account (RFC 2449 section 6.5)."""
    return endpoint.address, username


class POP3Auth(POP3Connection):
    """The login of a POP3 session; never sends credentials in clear unless allowed."""

    async def login(self, creds: Credentials, *, allow_plaintext: bool = False) -> None:
        """OAuth (XOAUTH2/OAUTHBEARER) with a token source; else AUTH PLAIN when advertised (one round
        trip), else USER/PASS; never sends credentials in clear."""
        self.recorder.masker.add(creds.password, creds.username)
        if not self._encrypted and not allow_plaintext:
            raise ProbeError(
                f"refusing to send credentials over an unencrypted connection to {self.endpoint.address} "
                "(plaintext login is not allowed)",
                reason="config",
            )
        if creds.token_source is not None:
            await self._auth_oauth(creds)
            return
        if "PLAIN" in {mech.upper() for mech in self.capabilities.get("SASL", [])}:
            await self._auth_plain(creds)
        else:
            steps = (("USER", creds.username, None), ("PASS", creds.password, f"PASS {MASK}"))
            for verb, arg, shown in steps:
                ok, reply, _ = await self._command(verb, arg, shown=shown, tolerate_err=True)
                if not ok:
                    raise self._refused_login(f"{verb} failed", reply)

    def _refused_login(self, what: str, reply: str) -> ProbeError:
        """A refused login, with the reason its response code gives (not every refusal is a password)."""
        reason = login_refusal_reason(reply)
        shown = f"-ERR {self._mask(reply)}"
        if reason == LOGIN_DELAY:
            delay = parse_login_delay(self.capabilities)
            announced = f" (it announces LOGIN-DELAY {delay[0]}s)" if delay else ""
            return ProbeError(
                f"the server refused the login as too soon after the previous one{announced}: {shown}",
                reason=reason,
            )
        return ProbeError(f"{what}: {shown}", reason=reason)

    async def _auth_plain(self, creds: Credentials) -> None:
        """AUTH PLAIN with an initial response, or after an empty challenge if the line would be too long."""
        response = sasl_plain(creds.username, creds.password)
        with_initial = len(f"AUTH PLAIN {response}\r\n") <= MAX_COMMAND  # RFC 5034 section 4
        self.recorder.commands += 1
        if with_initial:
            await self._send(f"AUTH PLAIN {response}", f"AUTH PLAIN {MASK}", "AUTH")
        else:
            await self._send("AUTH PLAIN", "AUTH PLAIN", "AUTH")
        pending: str | None = None if with_initial else response
        line = await self._read_line("AUTH")
        while is_continuation(line):
            if pending is None:
                # PLAIN has a single step; a further challenge is a dialogue we cannot follow, so cancel it.
                await self._send("*", "*", "AUTH")
                await self._read_line("AUTH")
                raise ProbeError("AUTH PLAIN: unexpected SASL challenge from the server", reason=AUTH)
            await self._send(pending, MASK, "AUTH")
            pending = None
            line = await self._read_line("AUTH")
        ok, reply = self._status(line, "AUTH")
        if not ok:
            raise self._refused_login("AUTH PLAIN refused", reply)

    async def _auth_oauth(self, creds: Credentials) -> None:
        """RFC 5034 AUTH with XOAUTH2/OAUTHBEARER from the server's ``SASL`` capability. A token does not
        fit the 255-octet command line, so the response follows an empty challenge; a refusal comes as an
        error challenge (base64 JSON, RFC 7628 section 3.2.3), answered by an empty line, then ``-ERR``."""
        ep = self.endpoint
        mech, encoded = await initial_response(
            creds, self.capabilities.get("SASL", []), self.recorder, AUTH, "POP3", ep.server_hostname, ep.port
        )
        self.recorder.commands += 1
        if len(f"AUTH {mech} {encoded}\r\n") <= MAX_COMMAND:
            await self._send(f"AUTH {mech} {encoded}", f"AUTH {mech} {MASK}", "AUTH")
            pending: str | None = None
        else:
            await self._send(f"AUTH {mech}", f"AUTH {mech}", "AUTH")
            pending = encoded
        detail = ""
        line = await self._read_line("AUTH")
        for _ in range(2):  # at most: the empty challenge, then an error challenge
            if not is_continuation(line):
                break
            if pending is not None:
                await self._send(pending, MASK, "AUTH")
                pending = None
            else:
                detail = error_of_challenge(line[1:])
                await self._send("", "", "AUTH")
            line = await self._read_line("AUTH")
        if is_continuation(line):  # a third challenge: a dialogue we cannot follow; cancel it
            await self._send("*", "*", "AUTH")
            await self._read_line("AUTH")
            raise ProbeError(f"AUTH {mech}: unexpected SASL challenge from the server", reason=AUTH)
        ok, reply = self._status(line, "AUTH")
        if not ok:
            refused = self._refused_login(f"POP3 AUTH {mech} refused", reply)
            if creds.token_source is not None and refused.reason == AUTH:
                creds.token_source.invalidate()  # refused: the next run asks for a fresh one
            extra = f" [{detail}]" if detail else ""
            raise ProbeError(f"{refused.message}{extra}", reason=refused.reason)
