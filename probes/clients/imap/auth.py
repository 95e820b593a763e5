"""IMAP logins: LOGIN (unless the server disables it), or AUTHENTICATE XOAUTH2/OAUTHBEARER with a token
source (SASL-IR when offered, RFC 4959); never in clear unless allowed. A refused token is invalidated so
the next run asks for a fresh one.
"""

from __future__ import annotations

import asyncio

from probes.auth.oauth import error_of_challenge, initial_response
from probes.clients.imap.connection import PROTOCOL, IMAPConnection
from probes.errors import ProbeError, ProbeTimeout
from probes.recorder import MASK
from probes.wire import imapwire as wire


class IMAPAuth(IMAPConnection):
    """The login of an IMAP session."""

    async def login(self) -> None:
        """Log in with the settings' credentials, then make sure the capabilities are the logged-in ones
        (from the tagged OK's ``[CAPABILITY ...]`` or asked again)."""
        st = self.settings
        self.recorder.masker.add(st.credentials.password, st.credentials.username)
        if st.credentials.token_source is not None:
            resp = await self._authenticate_oauth()
        else:
            if "LOGINDISABLED" in self._caps:
                raise ProbeError("IMAP server disables LOGIN on this connection", reason="receive_auth")
            resp, _ = await self._command(
                "LOGIN",
                [b"LOGIN ", st.credentials.username, b" ", st.credentials.password],
                shown=f"LOGIN {st.credentials.username} {MASK}",
                reason="receive_auth",
            )
        caps = wire.capabilities_of(resp)
        if caps is not None:
            self._caps = caps
        if not any(c.startswith("IMAP4") for c in self._caps) or len(self._caps) < 3:
            await self._capability()

    async def _authenticate_oauth(self) -> wire.Response:
        """AUTHENTICATE XOAUTH2/OAUTHBEARER (initial response inline with SASL-IR); an error challenge
        (``+ base64 JSON``) is answered with an empty line, after which the server says NO."""
        creds, ep = self.settings.credentials, self.settings.endpoint
        offered = [c[5:] for c in self._caps if c.startswith("AUTH=")]
        mech, encoded = await initial_response(
            creds, offered, self.recorder, "receive_auth", "IMAP", ep.server_hostname, ep.port
        )
        assert self._in is not None and self._writer is not None
        tag = next(self._tags)
        self.recorder.commands += 1
        sasl_ir = "SASL-IR" in self._caps
        detail = ""
        try:
            async with asyncio.timeout(self.settings.timeout):
                self._in.reset_budget()
                line = b"AUTHENTICATE " + mech.encode() + (b" " + encoded.encode() if sasl_ir else b"")
                shown = f"AUTHENTICATE {mech}" + (f" {MASK}" if sasl_ir else "")
                self.recorder.debug("C: imap", f"{tag.decode()} {shown}")
                self._writer.write(tag + b" " + line + b"\r\n")
                await self._writer.drain()
                sent_initial = sasl_ir
                while True:
                    resp = await self._read_response("AUTHENTICATE", tag, self.settings.limits.max_line)
                    if resp.tag == tag:
                        break
                    if resp.tag != b"+":
                        self._note(resp)
                        continue
                    if not sent_initial:
                        self.recorder.debug("C: imap", MASK)
                        self._writer.write(encoded.encode() + b"\r\n")
                        sent_initial = True
                    else:  # an error challenge: end the exchange, the tagged NO follows
                        detail = error_of_challenge(resp.head)
                        self.recorder.debug("C: imap", "")
                        self._writer.write(b"\r\n")
                    await self._writer.drain()
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP AUTHENTICATE: no reply within {self.settings.timeout:g}s") from None
        except ProbeError as exc:
            self._abort()
            raise ProbeError(f"IMAP AUTHENTICATE: {exc.message}", reason=exc.reason) from None
        except OSError as exc:
            self._abort()
            raise ProbeError(f"IMAP AUTHENTICATE: connection lost: {exc}", reason=PROTOCOL) from None
        if resp.status != b"OK":
            if creds.token_source is not None:
                creds.token_source.invalidate()  # refused: the next run asks for a fresh one
            status = (resp.status or b"?").decode()
            extra = f" [{detail}]" if detail else ""
            text = f"IMAP AUTHENTICATE {mech} answered {status} {resp.text()}{extra}"
            raise ProbeError(text, reason="receive_auth")
        return resp
