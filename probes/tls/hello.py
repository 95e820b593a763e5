"""ClientHellos of our own and a bounded, pure reader of the server's first flight.

Python's ``ssl`` (OpenSSL 3) cannot offer SSLv2, SSLv3, RC4, 3DES or EXPORT, so the scan
(``probes.tls.scan``) builds its hellos here and reads only what the server answers before the client's
second flight: ServerHello (or HelloRetryRequest), Certificate, CertificateStatus, ServerKeyExchange,
ServerHelloDone, or an alert. Knowing that a version or a suite was chosen needs no finished handshake,
hence no cryptography beyond a TLS 1.3 key share's public key.

Everything a server sends is hostile input: :func:`parse_flight` is pure, bounded (a record at most
16 KiB + 2048, one handshake message at most 64 KiB, the whole flight at most 256 KiB) and raises
nothing but :class:`HelloError`. What the answer *means* (accepted, refused, unknown) is
:func:`judge`'s: a server that chooses a version or suite we did not offer, or sends garbage, is
unknown, never "accepted" nor "refused".
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# ---- versions, groups, limits ---------------------------------------------------------------------------

SSL2: Final = 0x0002
SSL3: Final = 0x0300
TLS10: Final = 0x0301
TLS11: Final = 0x0302
TLS12: Final = 0x0303
TLS13: Final = 0x0304
VERSION_NAMES: Final = {
    SSL2: "SSLv2",
    SSL3: "SSLv3",
    TLS10: "TLSv1",
    TLS11: "TLSv1.1",
    TLS12: "TLSv1.2",
    TLS13: "TLSv1.3",
}

GROUPS: Final = {
    0x0017: "secp256r1",
    0x0018: "secp384r1",
    0x0019: "secp521r1",
    0x001D: "x25519",
    0x001E: "x448",
    0x0100: "ffdhe2048",
    0x0101: "ffdhe3072",
    0x0102: "ffdhe4096",
}
X25519: Final = 0x001D
SECP256R1: Final = 0x0017
# What a modern client offers (OpenSSL 3 / Firefox order), plus ffdhe2048 so a DHE-only server answers.
OFFERED_GROUPS: Final = (0x001D, 0x0017, 0x0018, 0x0019, 0x001E, 0x0100, 0x0101)
# rsa_pss_rsae, ecdsa, ed25519, rsa_pkcs1 (sha2, then sha1), dsa: enough for every certificate type.
SIGNATURE_ALGORITHMS: Final = (
    0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0804, 0x0805, 0x0806, 0x0809, 0x080A, 0x080B,
    0x0401, 0x0501, 0x0601, 0x0303, 0x0203, 0x0201, 0x0402, 0x0502, 0x0602, 0x0302, 0x0202,
)  # fmt: skip

MAX_RECORD: Final = 16384 + 2048  # RFC 5246 6.2.3: TLSCiphertext may exceed 2^14 by up to 2048
MAX_MESSAGE: Final = 64 * 1024  # one handshake message (a Certificate of a long chain fits)
MAX_FLIGHT: Final = 256 * 1024  # everything read for one hello
MAX_CERTS: Final = 32  # certificates kept from one Certificate message

EXT_SERVER_NAME: Final = 0
EXT_STATUS_REQUEST: Final = 5
EXT_SUPPORTED_GROUPS: Final = 10
EXT_EC_POINT_FORMATS: Final = 11
EXT_SIGNATURE_ALGORITHMS: Final = 13
EXT_PADDING: Final = 21
EXT_EXTENDED_MASTER_SECRET: Final = 23
EXT_SUPPORTED_VERSIONS: Final = 43
EXT_PSK_MODES: Final = 45
EXT_KEY_SHARE: Final = 51
EXT_RENEGOTIATION_INFO: Final = 0xFF01
SCSV_RENEGOTIATION: Final = 0x00FF

# The ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3).
HRR_RANDOM: Final = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

ALERTS: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    22: "record_overflow",
    40: "handshake_failure",
    42: "bad_certificate",
    47: "illegal_parameter",
    50: "decode_error",
    51: "decrypt_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    109: "missing_extension",
    110: "unsupported_extension",
    112: "unrecognized_name",
}
# Fatal alerts that answer a hello with "none of this": the version or every offered suite is refused.
# Any other alert (decode_error, internal_error ...) may mean our hello displeased the server: unknown.
REFUSING_ALERTS: Final = frozenset({40, 70, 71})


class HelloError(ValueError):
    """The server's bytes are not a first flight we can read (garbage, a limit passed, truncated)."""


# ---- the cipher-suite table (data) ----------------------------------------------------------------------

# kx: key exchange (ANY: TLS 1.3), auth: authentication, cipher, mac (AEAD for AEAD ciphers; SHA is
# HMAC-SHA1). Order: a modern client's preference (AEAD with forward secrecy first, weak suites last);
# :data:`ALL_TLS12` is offered in this order.
_SUITES: Final[tuple[tuple[int, str, str, str, str, str], ...]] = (
    (0x1302, "TLS_AES_256_GCM_SHA384", "ANY", "ANY", "AES_256_GCM", "AEAD"),
    (0x1303, "TLS_CHACHA20_POLY1305_SHA256", "ANY", "ANY", "CHACHA20_POLY1305", "AEAD"),
    (0x1301, "TLS_AES_128_GCM_SHA256", "ANY", "ANY", "AES_128_GCM", "AEAD"),
    (0x1304, "TLS_AES_128_CCM_SHA256", "ANY", "ANY", "AES_128_CCM", "AEAD"),
    (0x1305, "TLS_AES_128_CCM_8_SHA256", "ANY", "ANY", "AES_128_CCM_8", "AEAD"),
    (0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ECDHE", "ECDSA", "AES_256_GCM", "AEAD"),
    (0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "ECDHE", "RSA", "AES_256_GCM", "AEAD"),
    (0x009F, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", "DHE", "RSA", "AES_256_GCM", "AEAD"),
    (0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE", "ECDSA", "CHACHA20_POLY1305", "AEAD"),
    (0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "ECDHE", "RSA", "CHACHA20_POLY1305", "AEAD"),
    (0xCCAA, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "DHE", "RSA", "CHACHA20_POLY1305", "AEAD"),
    (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ECDHE", "ECDSA", "AES_128_GCM", "AEAD"),
    (0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "ECDHE", "RSA", "AES_128_GCM", "AEAD"),
    (0x009E, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", "DHE", "RSA", "AES_128_GCM", "AEAD"),
    (0xC0AC, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", "ECDHE", "ECDSA", "AES_128_CCM", "AEAD"),
    (0xC0AD, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM", "ECDHE", "ECDSA", "AES_256_CCM", "AEAD"),
    (0xC0AE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", "ECDHE", "ECDSA", "AES_128_CCM_8", "AEAD"),
    (0xC0AF, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8", "ECDHE", "ECDSA", "AES_256_CCM_8", "AEAD"),
    (0xC05C, "TLS_ECDHE_ECDSA_WITH_ARIA_128_GCM_SHA256", "ECDHE", "ECDSA", "ARIA_128_GCM", "AEAD"),
    (0xC05D, "TLS_ECDHE_ECDSA_WITH_ARIA_256_GCM_SHA384", "ECDHE", "ECDSA", "ARIA_256_GCM", "AEAD"),
    (0xC060, "TLS_ECDHE_RSA_WITH_ARIA_128_GCM_SHA256", "ECDHE", "RSA", "ARIA_128_GCM", "AEAD"),
    (0xC061, "TLS_ECDHE_RSA_WITH_ARIA_256_GCM_SHA384", "ECDHE", "RSA", "ARIA_256_GCM", "AEAD"),
    (0xC086, "TLS_ECDHE_ECDSA_WITH_CAMELLIA_128_GCM_SHA256", "ECDHE", "ECDSA", "CAMELLIA_128_GCM", "AEAD"),
    (0xC087, "TLS_ECDHE_ECDSA_WITH_CAMELLIA_256_GCM_SHA384", "ECDHE", "ECDSA", "CAMELLIA_256_GCM", "AEAD"),
    (0xC08A, "TLS_ECDHE_RSA_WITH_CAMELLIA_128_GCM_SHA256", "ECDHE", "RSA", "CAMELLIA_128_GCM", "AEAD"),
    (0xC08B, "TLS_ECDHE_RSA_WITH_CAMELLIA_256_GCM_SHA384", "ECDHE", "RSA", "CAMELLIA_256_GCM", "AEAD"),
    (0x00A2, "TLS_DHE_DSS_WITH_AES_128_GCM_SHA256", "DHE", "DSS", "AES_128_GCM", "AEAD"),
    (0x00A3, "TLS_DHE_DSS_WITH_AES_256_GCM_SHA384", "DHE", "DSS", "AES_256_GCM", "AEAD"),
    (0xC09E, "TLS_DHE_RSA_WITH_AES_128_CCM", "DHE", "RSA", "AES_128_CCM", "AEAD"),
    (0xC09F, "TLS_DHE_RSA_WITH_AES_256_CCM", "DHE", "RSA", "AES_256_CCM", "AEAD"),
    (0xC0A2, "TLS_DHE_RSA_WITH_AES_128_CCM_8", "DHE", "RSA", "AES_128_CCM_8", "AEAD"),
    (0xC0A3, "TLS_DHE_RSA_WITH_AES_256_CCM_8", "DHE", "RSA", "AES_256_CCM_8", "AEAD"),
    (0xC052, "TLS_DHE_RSA_WITH_ARIA_128_GCM_SHA256", "DHE", "RSA", "ARIA_128_GCM", "AEAD"),
    (0xC053, "TLS_DHE_RSA_WITH_ARIA_256_GCM_SHA384", "DHE", "RSA", "ARIA_256_GCM", "AEAD"),
    (0xC056, "TLS_DHE_DSS_WITH_ARIA_128_GCM_SHA256", "DHE", "DSS", "ARIA_128_GCM", "AEAD"),
    (0xC057, "TLS_DHE_DSS_WITH_ARIA_256_GCM_SHA384", "DHE", "DSS", "ARIA_256_GCM", "AEAD"),
    (0xC07C, "TLS_DHE_RSA_WITH_CAMELLIA_128_GCM_SHA256", "DHE", "RSA", "CAMELLIA_128_GCM", "AEAD"),
    (0xC07D, "TLS_DHE_RSA_WITH_CAMELLIA_256_GCM_SHA384", "DHE", "RSA", "CAMELLIA_256_GCM", "AEAD"),
    (0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "ECDHE", "ECDSA", "AES_128_CBC", "SHA256"),
    (0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "ECDHE", "RSA", "AES_128_CBC", "SHA256"),
    (0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", "ECDHE", "ECDSA", "AES_256_CBC", "SHA384"),
    (0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", "ECDHE", "RSA", "AES_256_CBC", "SHA384"),
    (0xC072, "TLS_ECDHE_ECDSA_WITH_CAMELLIA_128_CBC_SHA256", "ECDHE", "ECDSA", "CAMELLIA_128_CBC", "SHA256"),
    (0xC073, "TLS_ECDHE_ECDSA_WITH_CAMELLIA_256_CBC_SHA384", "ECDHE", "ECDSA", "CAMELLIA_256_CBC", "SHA384"),
    (0xC076, "TLS_ECDHE_RSA_WITH_CAMELLIA_128_CBC_SHA256", "ECDHE", "RSA", "CAMELLIA_128_CBC", "SHA256"),
    (0xC077, "TLS_ECDHE_RSA_WITH_CAMELLIA_256_CBC_SHA384", "ECDHE", "RSA", "CAMELLIA_256_CBC", "SHA384"),
    (0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "ECDHE", "ECDSA", "AES_128_CBC", "SHA"),
    (0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "ECDHE", "RSA", "AES_128_CBC", "SHA"),
    (0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "ECDHE", "ECDSA", "AES_256_CBC", "SHA"),
    (0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "ECDHE", "RSA", "AES_256_CBC", "SHA"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", "DHE", "RSA", "AES_128_CBC", "SHA256"),
    (0x006B, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", "DHE", "RSA", "AES_256_CBC", "SHA256"),
    (0x0040, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA256", "DHE", "DSS", "AES_128_CBC", "SHA256"),
    (0x006A, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA256", "DHE", "DSS", "AES_256_CBC", "SHA256"),
    (0x00BE, "TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA256", "DHE", "RSA", "CAMELLIA_128_CBC", "SHA256"),
    (0x00C4, "TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA256", "DHE", "RSA", "CAMELLIA_256_CBC", "SHA256"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", "DHE", "RSA", "AES_128_CBC", "SHA"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", "DHE", "RSA", "AES_256_CBC", "SHA"),
    (0x0032, "TLS_DHE_DSS_WITH_AES_128_CBC_SHA", "DHE", "DSS", "AES_128_CBC", "SHA"),
    (0x0038, "TLS_DHE_DSS_WITH_AES_256_CBC_SHA", "DHE", "DSS", "AES_256_CBC", "SHA"),
    (0x0045, "TLS_DHE_RSA_WITH_CAMELLIA_128_CBC_SHA", "DHE", "RSA", "CAMELLIA_128_CBC", "SHA"),
    (0x0088, "TLS_DHE_RSA_WITH_CAMELLIA_256_CBC_SHA", "DHE", "RSA", "CAMELLIA_256_CBC", "SHA"),
    (0x0044, "TLS_DHE_DSS_WITH_CAMELLIA_128_CBC_SHA", "DHE", "DSS", "CAMELLIA_128_CBC", "SHA"),
    (0x0087, "TLS_DHE_DSS_WITH_CAMELLIA_256_CBC_SHA", "DHE", "DSS", "CAMELLIA_256_CBC", "SHA"),
    (0x009A, "TLS_DHE_RSA_WITH_SEED_CBC_SHA", "DHE", "RSA", "SEED_CBC", "SHA"),
    (0x0099, "TLS_DHE_DSS_WITH_SEED_CBC_SHA", "DHE", "DSS", "SEED_CBC", "SHA"),
    (0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256", "RSA", "RSA", "AES_128_GCM", "AEAD"),
    (0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384", "RSA", "RSA", "AES_256_GCM", "AEAD"),
    (0xC09C, "TLS_RSA_WITH_AES_128_CCM", "RSA", "RSA", "AES_128_CCM", "AEAD"),
    (0xC09D, "TLS_RSA_WITH_AES_256_CCM", "RSA", "RSA", "AES_256_CCM", "AEAD"),
    (0xC0A0, "TLS_RSA_WITH_AES_128_CCM_8", "RSA", "RSA", "AES_128_CCM_8", "AEAD"),
    (0xC0A1, "TLS_RSA_WITH_AES_256_CCM_8", "RSA", "RSA", "AES_256_CCM_8", "AEAD"),
    (0xC050, "TLS_RSA_WITH_ARIA_128_GCM_SHA256", "RSA", "RSA", "ARIA_128_GCM", "AEAD"),
    (0xC051, "TLS_RSA_WITH_ARIA_256_GCM_SHA384", "RSA", "RSA", "ARIA_256_GCM", "AEAD"),
    (0xC07A, "TLS_RSA_WITH_CAMELLIA_128_GCM_SHA256", "RSA", "RSA", "CAMELLIA_128_GCM", "AEAD"),
    (0xC07B, "TLS_RSA_WITH_CAMELLIA_256_GCM_SHA384", "RSA", "RSA", "CAMELLIA_256_GCM", "AEAD"),
    (0xC02D, "TLS_ECDH_ECDSA_WITH_AES_128_GCM_SHA256", "ECDH", "ECDSA", "AES_128_GCM", "AEAD"),
    (0xC02E, "TLS_ECDH_ECDSA_WITH_AES_256_GCM_SHA384", "ECDH", "ECDSA", "AES_256_GCM", "AEAD"),
    (0xC031, "TLS_ECDH_RSA_WITH_AES_128_GCM_SHA256", "ECDH", "RSA", "AES_128_GCM", "AEAD"),
    (0xC032, "TLS_ECDH_RSA_WITH_AES_256_GCM_SHA384", "ECDH", "RSA", "AES_256_GCM", "AEAD"),
    (0x00A0, "TLS_DH_RSA_WITH_AES_128_GCM_SHA256", "DH", "RSA", "AES_128_GCM", "AEAD"),
    (0x00A1, "TLS_DH_RSA_WITH_AES_256_GCM_SHA384", "DH", "RSA", "AES_256_GCM", "AEAD"),
    (0x00A4, "TLS_DH_DSS_WITH_AES_128_GCM_SHA256", "DH", "DSS", "AES_128_GCM", "AEAD"),
    (0x00A5, "TLS_DH_DSS_WITH_AES_256_GCM_SHA384", "DH", "DSS", "AES_256_GCM", "AEAD"),
    (0x003C, "TLS_RSA_WITH_AES_128_CBC_SHA256", "RSA", "RSA", "AES_128_CBC", "SHA256"),
    (0x003D, "TLS_RSA_WITH_AES_256_CBC_SHA256", "RSA", "RSA", "AES_256_CBC", "SHA256"),
    (0x00BA, "TLS_RSA_WITH_CAMELLIA_128_CBC_SHA256", "RSA", "RSA", "CAMELLIA_128_CBC", "SHA256"),
    (0x00C0, "TLS_RSA_WITH_CAMELLIA_256_CBC_SHA256", "RSA", "RSA", "CAMELLIA_256_CBC", "SHA256"),
    (0xC025, "TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA256", "ECDH", "ECDSA", "AES_128_CBC", "SHA256"),
    (0xC026, "TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA384", "ECDH", "ECDSA", "AES_256_CBC", "SHA384"),
    (0xC029, "TLS_ECDH_RSA_WITH_AES_128_CBC_SHA256", "ECDH", "RSA", "AES_128_CBC", "SHA256"),
    (0xC02A, "TLS_ECDH_RSA_WITH_AES_256_CBC_SHA384", "ECDH", "RSA", "AES_256_CBC", "SHA384"),
    (0x003F, "TLS_DH_RSA_WITH_AES_128_CBC_SHA256", "DH", "RSA", "AES_128_CBC", "SHA256"),
    (0x0069, "TLS_DH_RSA_WITH_AES_256_CBC_SHA256", "DH", "RSA", "AES_256_CBC", "SHA256"),
    (0x003E, "TLS_DH_DSS_WITH_AES_128_CBC_SHA256", "DH", "DSS", "AES_128_CBC", "SHA256"),
    (0x0068, "TLS_DH_DSS_WITH_AES_256_CBC_SHA256", "DH", "DSS", "AES_256_CBC", "SHA256"),
    (0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA", "RSA", "RSA", "AES_128_CBC", "SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", "RSA", "RSA", "AES_256_CBC", "SHA"),
    (0x0041, "TLS_RSA_WITH_CAMELLIA_128_CBC_SHA", "RSA", "RSA", "CAMELLIA_128_CBC", "SHA"),
    (0x0084, "TLS_RSA_WITH_CAMELLIA_256_CBC_SHA", "RSA", "RSA", "CAMELLIA_256_CBC", "SHA"),
    (0x0096, "TLS_RSA_WITH_SEED_CBC_SHA", "RSA", "RSA", "SEED_CBC", "SHA"),
    (0x0007, "TLS_RSA_WITH_IDEA_CBC_SHA", "RSA", "RSA", "IDEA_CBC", "SHA"),
    (0xC004, "TLS_ECDH_ECDSA_WITH_AES_128_CBC_SHA", "ECDH", "ECDSA", "AES_128_CBC", "SHA"),
    (0xC005, "TLS_ECDH_ECDSA_WITH_AES_256_CBC_SHA", "ECDH", "ECDSA", "AES_256_CBC", "SHA"),
    (0xC00E, "TLS_ECDH_RSA_WITH_AES_128_CBC_SHA", "ECDH", "RSA", "AES_128_CBC", "SHA"),
    (0xC00F, "TLS_ECDH_RSA_WITH_AES_256_CBC_SHA", "ECDH", "RSA", "AES_256_CBC", "SHA"),
    (0x0031, "TLS_DH_RSA_WITH_AES_128_CBC_SHA", "DH", "RSA", "AES_128_CBC", "SHA"),
    (0x0037, "TLS_DH_RSA_WITH_AES_256_CBC_SHA", "DH", "RSA", "AES_256_CBC", "SHA"),
    (0x0030, "TLS_DH_DSS_WITH_AES_128_CBC_SHA", "DH", "DSS", "AES_128_CBC", "SHA"),
    (0x0036, "TLS_DH_DSS_WITH_AES_256_CBC_SHA", "DH", "DSS", "AES_256_CBC", "SHA"),
    (0x0009, "TLS_RSA_WITH_DES_CBC_SHA", "RSA", "RSA", "DES_CBC", "SHA"),
    (0x0015, "TLS_DHE_RSA_WITH_DES_CBC_SHA", "DHE", "RSA", "DES_CBC", "SHA"),
    (0x0012, "TLS_DHE_DSS_WITH_DES_CBC_SHA", "DHE", "DSS", "DES_CBC", "SHA"),
    (0x000C, "TLS_DH_DSS_WITH_DES_CBC_SHA", "DH", "DSS", "DES_CBC", "SHA"),
    (0x000F, "TLS_DH_RSA_WITH_DES_CBC_SHA", "DH", "RSA", "DES_CBC", "SHA"),
    (0xC012, "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "ECDHE", "RSA", "3DES_EDE_CBC", "SHA"),
    (0xC008, "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA", "ECDHE", "ECDSA", "3DES_EDE_CBC", "SHA"),
    (0x0016, "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA", "DHE", "RSA", "3DES_EDE_CBC", "SHA"),
    (0x0013, "TLS_DHE_DSS_WITH_3DES_EDE_CBC_SHA", "DHE", "DSS", "3DES_EDE_CBC", "SHA"),
    (0x000A, "TLS_RSA_WITH_3DES_EDE_CBC_SHA", "RSA", "RSA", "3DES_EDE_CBC", "SHA"),
    (0xC003, "TLS_ECDH_ECDSA_WITH_3DES_EDE_CBC_SHA", "ECDH", "ECDSA", "3DES_EDE_CBC", "SHA"),
    (0xC00D, "TLS_ECDH_RSA_WITH_3DES_EDE_CBC_SHA", "ECDH", "RSA", "3DES_EDE_CBC", "SHA"),
    (0x000D, "TLS_DH_DSS_WITH_3DES_EDE_CBC_SHA", "DH", "DSS", "3DES_EDE_CBC", "SHA"),
    (0x0010, "TLS_DH_RSA_WITH_3DES_EDE_CBC_SHA", "DH", "RSA", "3DES_EDE_CBC", "SHA"),
    (0x001B, "TLS_DH_anon_WITH_3DES_EDE_CBC_SHA", "DH_anon", "anon", "3DES_EDE_CBC", "SHA"),
    (0xC017, "TLS_ECDH_anon_WITH_3DES_EDE_CBC_SHA", "ECDH_anon", "anon", "3DES_EDE_CBC", "SHA"),
    (0xC011, "TLS_ECDHE_RSA_WITH_RC4_128_SHA", "ECDHE", "RSA", "RC4_128", "SHA"),
    (0xC007, "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "ECDHE", "ECDSA", "RC4_128", "SHA"),
    (0x0066, "TLS_DHE_DSS_WITH_RC4_128_SHA", "DHE", "DSS", "RC4_128", "SHA"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA", "RSA", "RSA", "RC4_128", "SHA"),
    (0x0004, "TLS_RSA_WITH_RC4_128_MD5", "RSA", "RSA", "RC4_128", "MD5"),
    (0xC002, "TLS_ECDH_ECDSA_WITH_RC4_128_SHA", "ECDH", "ECDSA", "RC4_128", "SHA"),
    (0xC00C, "TLS_ECDH_RSA_WITH_RC4_128_SHA", "ECDH", "RSA", "RC4_128", "SHA"),
    (0x0018, "TLS_DH_anon_WITH_RC4_128_MD5", "DH_anon", "anon", "RC4_128", "MD5"),
    (0xC016, "TLS_ECDH_anon_WITH_RC4_128_SHA", "ECDH_anon", "anon", "RC4_128", "SHA"),
    (0x0034, "TLS_DH_anon_WITH_AES_128_CBC_SHA", "DH_anon", "anon", "AES_128_CBC", "SHA"),
    (0x003A, "TLS_DH_anon_WITH_AES_256_CBC_SHA", "DH_anon", "anon", "AES_256_CBC", "SHA"),
    (0x006C, "TLS_DH_anon_WITH_AES_128_CBC_SHA256", "DH_anon", "anon", "AES_128_CBC", "SHA256"),
    (0x006D, "TLS_DH_anon_WITH_AES_256_CBC_SHA256", "DH_anon", "anon", "AES_256_CBC", "SHA256"),
    (0x00A6, "TLS_DH_anon_WITH_AES_128_GCM_SHA256", "DH_anon", "anon", "AES_128_GCM", "AEAD"),
    (0x00A7, "TLS_DH_anon_WITH_AES_256_GCM_SHA384", "DH_anon", "anon", "AES_256_GCM", "AEAD"),
    (0x0046, "TLS_DH_anon_WITH_CAMELLIA_128_CBC_SHA", "DH_anon", "anon", "CAMELLIA_128_CBC", "SHA"),
    (0x0089, "TLS_DH_anon_WITH_CAMELLIA_256_CBC_SHA", "DH_anon", "anon", "CAMELLIA_256_CBC", "SHA"),
    (0x00BF, "TLS_DH_anon_WITH_CAMELLIA_128_CBC_SHA256", "DH_anon", "anon", "CAMELLIA_128_CBC", "SHA256"),
    (0x00C5, "TLS_DH_anon_WITH_CAMELLIA_256_CBC_SHA256", "DH_anon", "anon", "CAMELLIA_256_CBC", "SHA256"),
    (0x009B, "TLS_DH_anon_WITH_SEED_CBC_SHA", "DH_anon", "anon", "SEED_CBC", "SHA"),
    (0x001A, "TLS_DH_anon_WITH_DES_CBC_SHA", "DH_anon", "anon", "DES_CBC", "SHA"),
    (0xC018, "TLS_ECDH_anon_WITH_AES_128_CBC_SHA", "ECDH_anon", "anon", "AES_128_CBC", "SHA"),
    (0xC019, "TLS_ECDH_anon_WITH_AES_256_CBC_SHA", "ECDH_anon", "anon", "AES_256_CBC", "SHA"),
    (0x0003, "TLS_RSA_EXPORT_WITH_RC4_40_MD5", "RSA_EXPORT", "RSA", "RC4_40", "MD5"),
    (0x0006, "TLS_RSA_EXPORT_WITH_RC2_CBC_40_MD5", "RSA_EXPORT", "RSA", "RC2_CBC_40", "MD5"),
    (0x0008, "TLS_RSA_EXPORT_WITH_DES40_CBC_SHA", "RSA_EXPORT", "RSA", "DES40_CBC", "SHA"),
    (0x000B, "TLS_DH_DSS_EXPORT_WITH_DES40_CBC_SHA", "DH_EXPORT", "DSS", "DES40_CBC", "SHA"),
    (0x000E, "TLS_DH_RSA_EXPORT_WITH_DES40_CBC_SHA", "DH_EXPORT", "RSA", "DES40_CBC", "SHA"),
    (0x0011, "TLS_DHE_DSS_EXPORT_WITH_DES40_CBC_SHA", "DHE_EXPORT", "DSS", "DES40_CBC", "SHA"),
    (0x0014, "TLS_DHE_RSA_EXPORT_WITH_DES40_CBC_SHA", "DHE_EXPORT", "RSA", "DES40_CBC", "SHA"),
    (0x0017, "TLS_DH_anon_EXPORT_WITH_RC4_40_MD5", "DH_anon_EXPORT", "anon", "RC4_40", "MD5"),
    (0x0019, "TLS_DH_anon_EXPORT_WITH_DES40_CBC_SHA", "DH_anon_EXPORT", "anon", "DES40_CBC", "SHA"),
    (0x0062, "TLS_RSA_EXPORT1024_WITH_DES_CBC_SHA", "RSA_EXPORT1024", "RSA", "DES_CBC", "SHA"),
    (0x0063, "TLS_DHE_DSS_EXPORT1024_WITH_DES_CBC_SHA", "DHE_EXPORT1024", "DSS", "DES_CBC", "SHA"),
    (0x0064, "TLS_RSA_EXPORT1024_WITH_RC4_56_SHA", "RSA_EXPORT1024", "RSA", "RC4_56", "SHA"),
    (0x0065, "TLS_DHE_DSS_EXPORT1024_WITH_RC4_56_SHA", "DHE_EXPORT1024", "DSS", "RC4_56", "SHA"),
    (0x0001, "TLS_RSA_WITH_NULL_MD5", "RSA", "RSA", "NULL", "MD5"),
    (0x0002, "TLS_RSA_WITH_NULL_SHA", "RSA", "RSA", "NULL", "SHA"),
    (0x003B, "TLS_RSA_WITH_NULL_SHA256", "RSA", "RSA", "NULL", "SHA256"),
    (0xC006, "TLS_ECDHE_ECDSA_WITH_NULL_SHA", "ECDHE", "ECDSA", "NULL", "SHA"),
    (0xC010, "TLS_ECDHE_RSA_WITH_NULL_SHA", "ECDHE", "RSA", "NULL", "SHA"),
    (0xC001, "TLS_ECDH_ECDSA_WITH_NULL_SHA", "ECDH", "ECDSA", "NULL", "SHA"),
    (0xC00B, "TLS_ECDH_RSA_WITH_NULL_SHA", "ECDH", "RSA", "NULL", "SHA"),
    (0xC015, "TLS_ECDH_anon_WITH_NULL_SHA", "ECDH_anon", "anon", "NULL", "SHA"),
)

_EXPORT_KX: Final = frozenset(
    {"RSA_EXPORT", "RSA_EXPORT1024", "DH_EXPORT", "DHE_EXPORT", "DHE_EXPORT1024", "DH_anon_EXPORT"}
)
_FS_KX: Final = frozenset({"ANY", "DHE", "ECDHE", "DH_anon", "ECDH_anon", "DHE_EXPORT", "DHE_EXPORT1024"})
_FFDH_KX: Final = frozenset({"DHE", "DH_anon", "DHE_EXPORT", "DHE_EXPORT1024", "DH_anon_EXPORT"})
_ECDH_EPHEMERAL_KX: Final = frozenset({"ECDHE", "ECDH_anon"})


@dataclass(frozen=True)
class Suite:
    """One cipher suite; the flags say which scan class it falls in."""

    code: int
    name: str  # IANA name
    kx: str
    auth: str
    cipher: str
    mac: str

    @property
    def tls13(self) -> bool:
        return self.kx == "ANY"

    @property
    def null(self) -> bool:
        return self.cipher == "NULL"

    @property
    def anon(self) -> bool:
        return self.auth == "anon"

    @property
    def export(self) -> bool:
        return self.kx in _EXPORT_KX

    @property
    def rc4(self) -> bool:
        return self.cipher.startswith("RC4")

    @property
    def tdes(self) -> bool:
        return self.cipher.startswith("3DES")

    @property
    def cbc(self) -> bool:
        """A block cipher in CBC mode (3DES, DES and EXPORT DES40 included)."""
        return self.cipher.endswith("CBC") or "_CBC_" in self.cipher

    @property
    def sha1_mac(self) -> bool:
        """Records authenticated with HMAC-SHA1 (``..._SHA`` suites)."""
        return self.mac == "SHA"

    @property
    def forward_secret(self) -> bool:
        """Ephemeral key exchange (DHE, ECDHE, anonymous DH/ECDH, every TLS 1.3 suite)."""
        return self.kx in _FS_KX

    @property
    def ffdhe(self) -> bool:
        """Finite-field ephemeral DH: the ServerKeyExchange carries a prime."""
        return self.kx in _FFDH_KX

    @property
    def ecdhe(self) -> bool:
        return self.kx in _ECDH_EPHEMERAL_KX

    @property
    def classes(self) -> frozenset[str]:
        """The scan classes (``probes.tls.scan.WEAK_CLASSES`` + ``INFO_CLASSES``) this suite is in."""
        flags = {
            "null": self.null,
            "anon": self.anon,
            "export": self.export,
            "rc4": self.rc4,
            "3des": self.tdes,
            "cbc_only": self.cbc,
            "sha1_mac": self.sha1_mac,
        }
        return frozenset(k for k, v in flags.items() if v)

    @property
    def weak(self) -> frozenset[str]:
        return self.classes & WEAK


WEAK: Final = frozenset({"null", "anon", "export", "rc4", "3des"})
SUITES: Final = {row[0]: Suite(*row) for row in _SUITES}
TLS13_SUITES: Final = tuple(s.code for s in SUITES.values() if s.tls13)
ALL_TLS12: Final = tuple(s.code for s in SUITES.values() if not s.tls13)  # modern order, weak last


def suites_where(pred: Callable[[Suite], bool], among: Iterable[int] = ALL_TLS12) -> tuple[int, ...]:
    """Codes of the table's suites (in preference order) for which ``pred(suite)`` is true."""
    return tuple(c for c in among if pred(SUITES[c]))


def suite_name(code: int) -> str:
    """IANA name, or ``0xC0FF`` style for a code not in the table."""
    suite = SUITES.get(code)
    return suite.name if suite else f"0x{code:04X}"


# SSLv2 cipher specs (3 bytes) and their classes.
SSL2_CIPHERS: Final = {
    0x010080: ("SSL_CK_RC4_128_WITH_MD5", frozenset({"rc4"})),
    0x020080: ("SSL_CK_RC4_128_EXPORT40_WITH_MD5", frozenset({"rc4", "export"})),
    0x030080: ("SSL_CK_RC2_128_CBC_WITH_MD5", frozenset({"cbc_only"})),
    0x040080: ("SSL_CK_RC2_128_CBC_EXPORT40_WITH_MD5", frozenset({"export", "cbc_only"})),
    0x050080: ("SSL_CK_IDEA_128_CBC_WITH_MD5", frozenset({"cbc_only"})),
    0x060040: ("SSL_CK_DES_64_CBC_WITH_MD5", frozenset({"cbc_only"})),
    0x0700C0: ("SSL_CK_DES_192_EDE3_CBC_WITH_MD5", frozenset({"3des", "cbc_only"})),
}


# ---- building hellos ------------------------------------------------------------------------------------


def _u8(data: bytes) -> bytes:
    return struct.pack("!B", len(data)) + data


def _u16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _u24(data: bytes) -> bytes:
    return struct.pack("!I", len(data))[1:] + data


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _u16(body)


def _codes(codes: Iterable[int]) -> bytes:
    return b"".join(struct.pack("!H", c) for c in codes)


def sni_name(name: str | None) -> str | None:
    """The name to send in SNI: not for an IP literal (RFC 6066 section 3), not for an empty name."""
    if not name:
        return None
    import ipaddress

    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return name.rstrip(".")
    return None


def key_shares(groups: Sequence[int] = (X25519, SECP256R1)) -> dict[int, bytes]:
    """Fresh public keys for a TLS 1.3 key_share (the private halves are dropped: no handshake follows)."""
    out: dict[int, bytes] = {}
    for group in groups:
        if group == X25519:
            out[group] = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        elif group == SECP256R1:
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            out[group] = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        else:
            raise ValueError(f"no key share for group 0x{group:04X}")
    return out


@dataclass(frozen=True)
class Offer:
    """What one hello offered: the judge compares the answer with it."""

    version: int  # highest version offered (client_version, or TLS 1.3 via supported_versions)
    suites: tuple[int, ...]
    min_version: int = SSL3  # lowest version the answer may carry (TLS 1.3 hello: TLS 1.3 only)
    compression: tuple[int, ...] = (0,)
    groups: tuple[int, ...] = ()
    shares: tuple[int, ...] = ()  # TLS 1.3: the groups we sent a key share for

    @property
    def sslv2(self) -> bool:
        return self.version == SSL2


def client_hello(
    version: int,
    suites: Sequence[int],
    *,
    server_name: str | None = None,
    extensions: bool = True,
    status_request: bool = False,
    renegotiation_info: bool = True,
    deflate: bool = False,
    random: bytes | None = None,
) -> tuple[bytes, Offer]:
    """One TLS record carrying a ClientHello for SSLv3 … TLS 1.2 (``version`` is client_version).

    ``extensions`` False: none at all (a pure SSLv3 hello; secure renegotiation is then signalled by the
    SCSV). Otherwise SNI (when a name is given and is not an IP literal), supported_groups,
    ec_point_formats, signature_algorithms (TLS 1.2 only), status_request (asked), renegotiation_info
    (asked), extended_master_secret, and padding so the hello is not 256-511 bytes long (RFC 7685: some
    servers hang on that size). ``deflate`` offers compression method 1 before null.
    """
    if version not in (SSL3, TLS10, TLS11, TLS12):
        raise ValueError(f"not a ClientHello version: 0x{version:04X}")
    codes = list(suites)
    if not extensions and renegotiation_info:
        codes.append(SCSV_RENEGOTIATION)
    compression = (1, 0) if deflate else (0,)
    exts = b""
    if extensions:
        parts = []
        name = sni_name(server_name)
        if name:
            host = name.encode("idna") if not name.isascii() else name.encode("ascii")
            parts.append(_ext(EXT_SERVER_NAME, _u16(b"\x00" + _u16(host))))
        parts.append(_ext(EXT_SUPPORTED_GROUPS, _u16(_codes(OFFERED_GROUPS))))
        parts.append(_ext(EXT_EC_POINT_FORMATS, _u8(b"\x00")))
        if version >= TLS12:
            parts.append(_ext(EXT_SIGNATURE_ALGORITHMS, _u16(_codes(SIGNATURE_ALGORITHMS))))
        if status_request:
            parts.append(_ext(EXT_STATUS_REQUEST, b"\x01\x00\x00\x00\x00"))  # ocsp, no ids, no exts
        if renegotiation_info:
            parts.append(_ext(EXT_RENEGOTIATION_INFO, b"\x00"))
        parts.append(_ext(EXT_EXTENDED_MASTER_SECRET, b""))
        exts = b"".join(parts)
    body = _hello_body(version, codes, compression, exts, random)
    offer = Offer(version=version, suites=tuple(suites), compression=compression, groups=OFFERED_GROUPS)
    return _record(TLS10 if version >= TLS10 else SSL3, _handshake(1, body)), offer


def tls13_client_hello(
    *,
    server_name: str | None = None,
    suites: Sequence[int] = TLS13_SUITES,
    shares: dict[int, bytes] | None = None,
    random: bytes | None = None,
) -> tuple[bytes, Offer]:
    """A ClientHello that offers TLS 1.3 only (supported_versions lists nothing else), key shares for
    x25519 and secp256r1, psk_dhe_ke (no PSK is offered: a full handshake)."""
    shares = key_shares() if shares is None else shares
    parts = []
    name = sni_name(server_name)
    if name:
        host = name.encode("idna") if not name.isascii() else name.encode("ascii")
        parts.append(_ext(EXT_SERVER_NAME, _u16(b"\x00" + _u16(host))))
    parts.append(_ext(EXT_SUPPORTED_VERSIONS, _u8(_codes([TLS13]))))
    parts.append(_ext(EXT_SUPPORTED_GROUPS, _u16(_codes(OFFERED_GROUPS))))
    parts.append(_ext(EXT_SIGNATURE_ALGORITHMS, _u16(_codes(SIGNATURE_ALGORITHMS))))
    entries = b"".join(struct.pack("!H", g) + _u16(k) for g, k in shares.items())
    parts.append(_ext(EXT_KEY_SHARE, _u16(entries)))
    parts.append(_ext(EXT_PSK_MODES, _u8(b"\x01")))
    parts.append(_ext(EXT_EC_POINT_FORMATS, _u8(b"\x00")))
    body = _hello_body(TLS12, list(suites), (0,), b"".join(parts), random, session_id=os.urandom(32))
    offer = Offer(
        version=TLS13, suites=tuple(suites), min_version=TLS13, groups=OFFERED_GROUPS, shares=tuple(shares)
    )
    return _record(TLS10, _handshake(1, body)), offer


def _hello_body(
    version: int,
    codes: Sequence[int],
    compression: Sequence[int],
    exts: bytes,
    random: bytes | None,
    session_id: bytes = b"",
) -> bytes:
    rnd = random if random is not None else os.urandom(32)
    if len(rnd) != 32:
        raise ValueError("a hello random is 32 bytes")
    head = struct.pack("!H", version) + rnd + _u8(session_id) + _u16(_codes(codes)) + _u8(bytes(compression))
    if not exts:
        return head
    # RFC 7685: a hello of 256-511 bytes (record header excluded) hangs some F5 servers; pad to 512.
    size = 4 + len(head) + 2 + len(exts)
    if 256 <= size < 512:
        pad = max(512 - size - 4, 1)
        exts += _ext(EXT_PADDING, bytes(pad))
    return head + _u16(exts)


def _handshake(kind: int, body: bytes) -> bytes:
    return struct.pack("!B", kind) + _u24(body)


def _record(version: int, payload: bytes) -> bytes:
    return struct.pack("!BHH", 22, version, len(payload)) + payload


def sslv2_client_hello(challenge: bytes | None = None) -> tuple[bytes, Offer]:
    """An SSLv2 CLIENT-HELLO (2-byte record header) offering every SSLv2 cipher spec."""
    chal = challenge if challenge is not None else os.urandom(16)
    specs = b"".join(c.to_bytes(3, "big") for c in SSL2_CIPHERS)
    body = b"\x01" + struct.pack("!HHHH", SSL2, len(specs), 0, len(chal)) + specs + chal
    return struct.pack("!H", 0x8000 | len(body)) + body, Offer(version=SSL2, suites=(), min_version=SSL2)


# ---- reading the first flight (pure) -------------------------------------------------------------------


@dataclass
class Flight:
    """What the server sent before it expects our second flight (or the part of it that arrived)."""

    version: int | None = None  # negotiated: supported_versions if present, else ServerHello.version
    suite: int | None = None
    compression: int | None = None
    secure_renegotiation: bool | None = None  # renegotiation_info in the ServerHello (TLS <= 1.2)
    key_share_group: int | None = None  # TLS 1.3 ServerHello key_share, or the group an HRR asks for
    hrr: bool = False
    certificates: list[bytes] = field(default_factory=list)
    ocsp: bytes | None = field(default=None, repr=False)  # CertificateStatus (ocsp) response, DER
    dh_bits: int | None = None  # ServerKeyExchange prime size (finite-field DHE)
    ecdh_curve: int | None = None  # ServerKeyExchange named curve (ECDHE)
    alert: tuple[int, int] | None = None  # (level, description) of the first fatal alert
    hello_done: bool = False
    complete: bool = False  # nothing more to wait for
    sslv2_ciphers: tuple[int, ...] | None = None  # an SSLv2 SERVER-HELLO's cipher specs
    sslv2_version: int | None = None
    messages: list[int] = field(default_factory=list)  # handshake types seen, in order

    @property
    def server_hello(self) -> bool:
        return self.version is not None or self.sslv2_ciphers is not None


class _Cursor:
    """Bounds-checked reads over one byte string; every overrun is a HelloError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise HelloError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def vec24(self) -> bytes:
        return self.take(self.u24())

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.left:
            raise HelloError(f"{self.left} trailing byte(s) in {self.what}")


def parse_flight(data: bytes, *, eof: bool = False, sslv2: bool = False) -> Flight:
    """Parse the bytes received so far for one hello. ``complete`` tells whether the flight is whole
    (ServerHelloDone, a TLS 1.3 ServerHello or HRR, a fatal alert, an SSLv2 SERVER-HELLO). At ``eof`` a
    record cut short is an error; before it, the parse simply waits for more. Raises only HelloError."""
    if len(data) > MAX_FLIGHT:
        raise HelloError(f"first flight larger than {MAX_FLIGHT} bytes")
    flight = Flight()
    if sslv2 and data and data[0] & 0x80:
        return _parse_sslv2(data, flight, eof)
    pos = 0
    handshake = b""
    while pos < len(data):
        if len(data) - pos < 5:
            if eof:
                raise HelloError("record header truncated")
            break
        kind, version, length = struct.unpack_from("!BHH", data, pos)
        if kind not in (20, 21, 22, 23) or version >> 8 != 3:
            raise HelloError(f"not a TLS record (type {kind}, version 0x{version:04X})")
        if length > MAX_RECORD:
            raise HelloError(f"record of {length} bytes (limit {MAX_RECORD})")
        if len(data) - pos - 5 < length:
            if eof:
                raise HelloError("record truncated")
            break
        payload = data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if kind == 21:
            if len(payload) != 2:
                raise HelloError("alert record of the wrong size")
            if payload[0] == 2 or payload[1] == 0:  # fatal, or a close_notify: nothing follows
                flight.alert = (payload[0], payload[1])
                flight.complete = True
                return flight
            continue  # a warning (e.g. unrecognized_name): the handshake goes on
        if kind == 20:
            if flight.version == TLS13 or flight.hrr:
                continue  # middlebox-compatibility ChangeCipherSpec
            raise HelloError("ChangeCipherSpec before the server's flight ended")
        if kind == 23:
            if flight.version == TLS13:
                flight.complete = True
                return flight
            raise HelloError("application data before the handshake")
        handshake += payload
        if len(handshake) > MAX_FLIGHT:
            raise HelloError("handshake data over the flight limit")
        handshake = _messages(handshake, flight)
        if flight.complete:
            return flight
    if eof and handshake:
        raise HelloError("handshake message truncated")
    return flight


def _messages(buf: bytes, flight: Flight) -> bytes:
    """Consume whole handshake messages from ``buf``; returns the unconsumed tail."""
    while len(buf) >= 4:
        kind = buf[0]
        length = int.from_bytes(buf[1:4], "big")
        if length > MAX_MESSAGE:
            raise HelloError(f"handshake message of {length} bytes (limit {MAX_MESSAGE})")
        if len(buf) < 4 + length:
            return buf
        body, buf = buf[4 : 4 + length], buf[4 + length :]
        flight.messages.append(kind)
        if not flight.server_hello and kind != 2:
            raise HelloError(f"handshake message {kind} before the ServerHello")
        if kind == 2:
            if flight.server_hello:
                raise HelloError("a second ServerHello")
            _server_hello(body, flight)
            if flight.hrr or flight.version == TLS13:
                flight.complete = True  # the rest is encrypted (or a new hello is wanted)
                return buf
        elif kind == 11:
            _certificate(body, flight)
        elif kind == 22:
            _certificate_status(body, flight)
        elif kind == 12:
            _server_key_exchange(body, flight)
        elif kind == 14:
            if body:
                raise HelloError("ServerHelloDone with a body")
            flight.hello_done = flight.complete = True
            return buf
        elif kind == 13:
            pass  # CertificateRequest: a client certificate is asked for; nothing of ours to read
        else:
            raise HelloError(f"unexpected handshake message {kind} in the server's first flight")
    return buf


def _server_hello(body: bytes, flight: Flight) -> None:
    cur = _Cursor(body, "ServerHello")
    legacy = cur.u16()
    random = cur.take(32)
    sid = cur.vec8()
    if len(sid) > 32:
        raise HelloError("ServerHello session id longer than 32 bytes")
    flight.suite = cur.u16()
    flight.compression = cur.u8()
    flight.version = legacy
    flight.hrr = random == HRR_RANDOM
    if cur.left == 0:
        return
    exts = _Cursor(cur.vec16(), "ServerHello extensions")
    cur.end()
    seen: set[int] = set()
    while exts.left:
        kind = exts.u16()
        data = exts.vec16()
        if kind in seen:
            raise HelloError(f"extension {kind} twice in the ServerHello")
        seen.add(kind)
        ext = _Cursor(data, f"ServerHello extension {kind}")
        if kind == EXT_SUPPORTED_VERSIONS:
            flight.version = ext.u16()
            ext.end()
        elif kind == EXT_KEY_SHARE:
            flight.key_share_group = ext.u16()
            if not flight.hrr and not ext.vec16():
                raise HelloError("empty key share")
            ext.end()
        elif kind == EXT_RENEGOTIATION_INFO:
            if ext.vec8():
                raise HelloError("renegotiation_info with data in an initial handshake")
            ext.end()
            flight.secure_renegotiation = True
    if EXT_RENEGOTIATION_INFO not in seen:
        flight.secure_renegotiation = False


def _certificate(body: bytes, flight: Flight) -> None:
    if flight.version == TLS13:
        raise HelloError("a clear-text Certificate in TLS 1.3")
    cur = _Cursor(body, "Certificate")
    certs = _Cursor(cur.vec24(), "certificate list")
    cur.end()
    out: list[bytes] = []
    while certs.left:
        der = certs.vec24()
        if not der:
            raise HelloError("empty certificate in the list")
        if len(out) < MAX_CERTS:
            out.append(der)
    flight.certificates = out


def _certificate_status(body: bytes, flight: Flight) -> None:
    cur = _Cursor(body, "CertificateStatus")
    if cur.u8() != 1:
        raise HelloError("CertificateStatus of a type other than ocsp")
    der = cur.vec24()
    cur.end()
    flight.ocsp = der


def _server_key_exchange(body: bytes, flight: Flight) -> None:
    """The DH prime size or the named curve; the parameters' signature is not checked (no handshake
    follows, nothing is trusted from it but its size)."""
    suite = SUITES.get(flight.suite) if flight.suite is not None else None
    if suite is None:
        return
    cur = _Cursor(body, "ServerKeyExchange")
    if suite.ffdhe:
        prime = cur.vec16()
        if not prime:
            raise HelloError("ServerKeyExchange with an empty DH prime")
        flight.dh_bits = int.from_bytes(prime, "big").bit_length()
    elif suite.ecdhe:
        if cur.u8() != 3:
            raise HelloError("ServerKeyExchange without a named curve")
        flight.ecdh_curve = cur.u16()


def _parse_sslv2(data: bytes, flight: Flight, eof: bool) -> Flight:
    """An SSLv2 record (2-byte header) with a SERVER-HELLO or an ERROR."""
    if len(data) < 2:
        if eof:
            raise HelloError("SSLv2 record header truncated")
        return flight
    length = ((data[0] & 0x7F) << 8) | data[1]
    if length > MAX_RECORD:
        raise HelloError(f"SSLv2 record of {length} bytes (limit {MAX_RECORD})")
    if len(data) < 2 + length:
        if eof:
            raise HelloError("SSLv2 record truncated")
        return flight
    cur = _Cursor(data[2 : 2 + length], "SSLv2 record")
    kind = cur.u8()
    if kind == 0:  # ERROR
        flight.alert = (2, cur.u16())
        flight.complete = True
        return flight
    if kind != 4:
        raise HelloError(f"SSLv2 message {kind} where a SERVER-HELLO belongs")
    cur.u8()  # session id hit
    cur.u8()  # certificate type
    flight.sslv2_version = cur.u16()
    cert_len, specs_len, conn_len = cur.u16(), cur.u16(), cur.u16()
    cert = cur.take(cert_len)
    specs = cur.take(specs_len)
    cur.take(conn_len)
    cur.end()
    if specs_len % 3:
        raise HelloError("SSLv2 cipher specs not a multiple of 3 bytes")
    flight.sslv2_ciphers = tuple(int.from_bytes(specs[i : i + 3], "big") for i in range(0, specs_len, 3))
    if cert:
        flight.certificates = [cert]
    flight.complete = True
    return flight


# ---- what an answer means ------------------------------------------------------------------------------

Verdict = Literal["accepted", "refused", "unknown"]


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    why: str = ""  # for refused/unknown: the alert or the oddity, one line
    version: int | None = None
    suite: int | None = None


def judge(flight: Flight, offer: Offer, *, closed: bool = False, close_refuses: bool = True) -> Answer:
    """Accepted: the server chose a version and a suite within the offer. Refused: a refusing alert
    (handshake_failure, protocol_version, insufficient_security), an SSLv2 ERROR, or — ``closed`` — the
    server closed the connection cleanly (no reset) without a byte after our hello: Dovecot's login
    processes refuse every hello so, and many servers an SSLv2 one. ``close_refuses`` False (the same
    server has answered no other hello yet) makes such a close unknown: a server that closes every
    connection is not refusing a version, it is refusing us. Anything else is unknown."""
    if offer.sslv2:
        if flight.sslv2_ciphers is not None:
            if flight.sslv2_version != SSL2:
                return Answer("unknown", f"SSLv2 SERVER-HELLO with version 0x{flight.sslv2_version:04X}")
            unknown = [c for c in flight.sslv2_ciphers if c not in SSL2_CIPHERS]
            if unknown:
                return Answer("unknown", "SSLv2 SERVER-HELLO with cipher specs we did not offer")
            return Answer("accepted", version=SSL2)
        if flight.alert is not None and flight.version is None:
            return Answer("refused", _alert_text(flight.alert))
    if flight.version is not None:
        if flight.hrr and (offer.version != TLS13 or flight.version != TLS13):
            return Answer("unknown", "HelloRetryRequest to a hello that did not offer TLS 1.3")
        if flight.version > offer.version or flight.version < offer.min_version or flight.version < SSL3:
            return Answer("unknown", f"server chose version 0x{flight.version:04X}, not offered")
        if flight.suite not in offer.suites:
            return Answer("unknown", f"server chose suite {suite_name(flight.suite or 0)}, not offered")
        if flight.compression not in offer.compression:
            return Answer("unknown", f"server chose compression {flight.compression}, not offered")
        if flight.version == TLS13 and flight.key_share_group not in offer.groups:
            return Answer("unknown", "server chose a key-share group we did not offer")
        if flight.version == TLS13 and not flight.hrr and flight.key_share_group not in offer.shares:
            return Answer("unknown", "server answered a key share we did not send (no HelloRetryRequest)")
        return Answer("accepted", version=flight.version, suite=flight.suite)
    if flight.alert is not None:
        if flight.alert[1] in REFUSING_ALERTS:
            return Answer("refused", _alert_text(flight.alert))
        return Answer("unknown", f"server sent {_alert_text(flight.alert)}")
    if closed and not flight.messages:
        if close_refuses:
            return Answer("refused", "connection closed without an answer")
        return Answer("unknown", "connection closed without an answer")
    return Answer("unknown", "no ServerHello")


def _alert_text(alert: tuple[int, int]) -> str:
    level = "fatal" if alert[0] == 2 else "warning"
    return f"{level} alert {ALERTS.get(alert[1], str(alert[1]))}"
