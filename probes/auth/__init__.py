"""How a probe logs in: credentials, and OAuth 2.0 token sources with the SASL XOAUTH2/OAUTHBEARER
exchange.
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.auth.credentials import Credentials, TokenSource
    from probes.auth.oauth import (
        MAX_RESPONSE_BYTES,
        FileToken,
        GrantToken,
        OAuthError,
        choose_mechanism,
        error_of_challenge,
        initial_response,
        reuse_window,
        sasl_initial,
        secret_forms,
    )

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Credentials",
    "FileToken",
    "GrantToken",
    "OAuthError",
    "TokenSource",
    "choose_mechanism",
    "error_of_challenge",
    "initial_response",
    "reuse_window",
    "sasl_initial",
    "secret_forms",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "credentials": "Credentials TokenSource",
            "oauth": (
                "MAX_RESPONSE_BYTES FileToken GrantToken OAuthError choose_mechanism error_of_challenge"
                " initial_response reuse_window sasl_initial secret_forms"
            ),
        },
    )
