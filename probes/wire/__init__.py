"""The connection layer under every probe: endpoints, TLS client contexts and TCP connect (net), the
bounded line/literal reader (framing), DNS queries (dns), the TLS facts a handshake shows (certs), the
IMAP response syntax (imapwire) and the per-server session slots (slots). No protocol logic here.
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
    from probes.wire.certs import (
        LEGACY_VERSIONS,
        VERIFY_REASONS,
        CertInfo,
        TLSFacts,
        cert_info,
        classify_verify_error,
        dns_pattern_matches,
        earliest_expiry,
        facts_from_connection,
        find_ssl_error,
        hostname_matches,
        legacy_context,
        openssl_offers,
        presented_chain,
    )
    from probes.wire.dns import DNSError, DNSResolver, DNSSECStatus, DNSSettings, addresses, query, weakest
    from probes.wire.framing import (
        DEFAULT_MAX_LINE,
        DEFAULT_MAX_MESSAGE,
        BoundedReader,
        ConnectionClosed,
        FrameError,
        ReadLimits,
    )
    from probes.wire.net import (
        CLOSE_TIMEOUT,
        Endpoint,
        TLSMode,
        TLSSettings,
        clear_contexts,
        client_context,
        close_writer,
        context_builds,
        family_of,
        source_for,
        source_socket_factory,
        tcp_connect,
        tls_error_message,
    )
    from probes.wire.slots import QueueTimeout, ServerSlots, deadline_extender, maybe_session

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_MESSAGE",
    "LEGACY_VERSIONS",
    "VERIFY_REASONS",
    "BoundedReader",
    "CertInfo",
    "ConnectionClosed",
    "DNSError",
    "DNSResolver",
    "DNSSECStatus",
    "DNSSettings",
    "Endpoint",
    "FrameError",
    "QueueTimeout",
    "ReadLimits",
    "ServerSlots",
    "TLSFacts",
    "TLSMode",
    "TLSSettings",
    "addresses",
    "cert_info",
    "classify_verify_error",
    "clear_contexts",
    "client_context",
    "close_writer",
    "context_builds",
    "deadline_extender",
    "dns_pattern_matches",
    "earliest_expiry",
    "facts_from_connection",
    "family_of",
    "find_ssl_error",
    "hostname_matches",
    "legacy_context",
    "maybe_session",
    "openssl_offers",
    "presented_chain",
    "query",
    "source_for",
    "source_socket_factory",
    "tcp_connect",
    "tls_error_message",
    "weakest",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "certs": (
                "LEGACY_VERSIONS VERIFY_REASONS CertInfo TLSFacts cert_info classify_verify_error"
                " dns_pattern_matches earliest_expiry facts_from_connection find_ssl_error hostname_matches"
                " legacy_context openssl_offers presented_chain"
            ),
            "dns": "DNSError DNSResolver DNSSECStatus DNSSettings addresses query weakest",
            "framing": (
                "DEFAULT_MAX_LINE DEFAULT_MAX_MESSAGE BoundedReader ConnectionClosed FrameError ReadLimits"
            ),
            "net": (
                "CLOSE_TIMEOUT Endpoint TLSMode TLSSettings clear_contexts client_context close_writer"
                " context_builds family_of source_for source_socket_factory tcp_connect tls_error_message"
            ),
            "slots": "QueueTimeout ServerSlots deadline_extender maybe_session",
        },
    )
