"""What a probe logs in with: a username and a password, or a source of OAuth 2.0 bearer tokens.

Apart from the OAuth flows (:mod:`probes.auth.oauth`) so that every client can take credentials without
importing the token machinery, and the token sources can name credentials without a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class TokenSource(Protocol):
    """Gives a currently valid access token; ``invalidate`` forgets a token the server refused."""

    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


@dataclass(frozen=True)
class Credentials:
    """A login: a password, or with ``token_source`` an OAuth 2.0 bearer token (XOAUTH2/OAUTHBEARER)."""

    username: str
    password: str = field(default="", repr=False)
    token_source: TokenSource | None = field(default=None, repr=False, compare=False)
    mechanism: str = "auto"  # OAuth only: auto (OAUTHBEARER, else XOAUTH2), xoauth2 or oauthbearer
