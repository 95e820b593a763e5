"""The Received chain parser (probes.receipt.received): hops from the sender, TLS per hop, the IP the receiver
saw, per-hop delays with clock skew shown as it is; fuzzed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from probes.receipt.received import MAX_HOPS, parse_hop, path_of

# As Postfix writes them (smtpd_tls_received_header = yes), newest first; then Dovecot's LMTP.
CHAIN = (
    b"Received: from mx2.example.test\r\n"
    b"\tby imap.example.test with LMTP\r\n"
    b"\tid abc; Tue, 01 Dec 2026 23:00:03 +0000\r\n"
    b"Received: from mail.example.test (localhost [127.0.0.1])\r\n"
    b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)\r\n"
    b"\t key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256)\r\n"
    b"\t(No client certificate requested)\r\n"
    b"\tby mx2.example.test (Postfix) with ESMTPS id 4Xyz\r\n"
    b"\tfor <hop@example.test>; Tue, 01 Dec 2026 23:00:02 +0000 (UTC)\r\n"
    b"Received: from [127.0.0.1] (localhost [127.0.0.1])\r\n"
    b"\tby mail.example.test (Postfix) with ESMTPSA id 4Abc\r\n"
    b"\tfor <hop@example.test>; Tue, 01 Dec 2026 23:00:00 +0000 (UTC)\r\n"
    b"Subject: x\r\n\r\nbody\r\n"
)


def test_chain_from_the_sender_side() -> None:
    path = path_of(CHAIN)
    assert path.count == 3
    first, mx, lmtp = path.hops
    assert (first.index, first.protocol, first.tls) == (1, "ESMTPSA", True)
    assert (mx.protocol, mx.tls, mx.from_ip, mx.by) == ("ESMTPS", True, "127.0.0.1", "mx2.example.test")
    assert (lmtp.protocol, lmtp.tls, lmtp.from_ip) == ("LMTP", False, None)
    assert path.delays() == [2.0, 1.0]
    assert path.total == 3.0
    assert path.sender_ip == "127.0.0.1"  # the client of the last SMTP hop, not of LMTP


def test_clock_skew_is_shown_not_clamped() -> None:
    raw = (
        b"Received: from a ([192.0.2.7]) by b with ESMTP; Tue, 01 Dec 2026 22:59:58 +0000\r\n"
        b"Received: from c ([IPv6:2001:db8::1]) by a with SMTP; Tue, 01 Dec 2026 23:00:00 +0000\r\n\r\n"
    )
    path = path_of(raw)
    assert path.delays() == [-2.0]  # b's clock is behind a's
    assert path.hops[0].from_ip == "2001:db8::1" and not path.hops[0].tls
    assert path.sender_ip == "192.0.2.7"


def test_broken_dates_and_odd_fields() -> None:
    hop = parse_hop("from x by y with ESMTP; not a date", 1)
    assert hop.timestamp is None and hop.protocol == "ESMTP"
    assert parse_hop("", 1).protocol is None
    assert parse_hop("from [999.1.1.1] by y", 1).from_ip is None
    raw = b"".join(b"Received: by h%d with SMTP; Tue, 01 Dec 2026 23:00:00 +0000\r\n" % i for i in range(50))
    path = path_of(raw + b"\r\n")
    assert path.count == MAX_HOPS and path.truncated


@given(st.text(max_size=400))
def test_parse_hop_is_total(value: str) -> None:
    hop = parse_hop(value, 1)
    assert hop.index == 1


@given(st.binary(max_size=2000))
def test_path_of_is_total(raw: bytes) -> None:
    path = path_of(raw)
    assert path.count <= MAX_HOPS
    path.delays()
    _ = path.total, path.sender_ip
