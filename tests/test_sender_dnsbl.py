"""The canary's sending IP as the receiver saw it (the Received chain) against DNSBL zones: a real round
trip through the session's Postfix + Dovecot, zones served by the real NSD + Unbound of tests/dnsstack.
``listed.test`` lists 127.0.0.1 (the stack's sending IP) with a TXT reason, ``clean.test`` does not,
``refusing.test`` answers 127.255.255.254 (an open-resolver refusal). Exported exactly; the run succeeds
whatever the lists say; a second run within cache_for asks no zone again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from exporter.config import ConfigError, load_config
from exporter.metrics.collector import ExporterState, build_registry
from probes.domain.dnsbl import ListingCache
from tests.mailstack import MailStack
from tests.support import dnsstack
from tests.support.roundtrip import make_runner, run_one
from tests.support.stackconfig import roundtrip, write_config

LISTED = '1.0.0.127 A 127.0.0.2\n1.0.0.127 A 127.0.0.4\n1.0.0.127 TXT "listed for the test"\n'
REFUSED = "1.0.0.127 A 127.255.255.254\n"


@pytest.fixture(scope="module")
def dns() -> Iterator[dnsstack.DNSStack]:
    if not dnsstack.available():
        pytest.fail("nsd/unbound not installed (scripts/install-deps.sh installs them)", pytrace=False)
    zones = [
        dnsstack.ZoneSpec("listed.test", LISTED),
        dnsstack.ZoneSpec("clean.test", "other A 127.0.0.1\n"),
        dnsstack.ZoneSpec("refusing.test", REFUSED),
    ]
    with dnsstack.DNSStack(zones) as stack:
        yield stack


def _conf(dns: dnsstack.DNSStack, zones: list[str]) -> dict[str, object]:
    return {"zones": zones, "resolvers": ["127.0.0.1"], "resolver_port": dns.resolver_port, "timeout": 5}


def test_sending_ip_listed_and_not_listed_exported_exactly(
    mailstack: MailStack, mailbox: str, tmp_path: Path, dns: dnsstack.DNSStack
) -> None:
    zones = ["listed.test", "clean.test", "refusing.test"]
    probe = roundtrip(mailstack, tmp_path, "bl", mailbox, sender_dnsbl=_conf(dns, zones))
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner)
    assert result.success, result.message
    assert result.receiver["sender_ip"] == "127.0.0.1"
    assert result.receiver["sender_dnsbl"] == {
        "listed.test": "listed",
        "clean.test": "not_listed",
        "refusing.test": "refused",
    }
    listed = next(li for li in result.sender_dnsbl if li.zone == "listed.test")
    assert listed.codes == ("127.0.0.2", "127.0.0.4")
    assert listed.reason == "listed for the test"
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    got = sorted(line for line in text.splitlines() if line.startswith("mailcanary_roundtrip_sender_dnsbl"))
    expected = [
        'mailcanary_roundtrip_sender_dnsbl_listed{probe="bl",zone="clean.test"} 0.0',
        'mailcanary_roundtrip_sender_dnsbl_listed{probe="bl",zone="listed.test"} 1.0',
    ]
    answers = {"listed.test": "listed", "clean.test": "not_listed", "refusing.test": "refused"}
    for zone, status in answers.items():
        for s in ("not_listed", "listed", "refused", "error"):
            value = "1.0" if s == status else "0.0"
            expected.append(
                f'mailcanary_roundtrip_sender_dnsbl_status{{probe="bl",status="{s}",zone="{zone}"}} {value}'
            )
    assert got == sorted(expected)
    assert "listed for the test" not in text  # the reason goes to logs only

    # Within cache_for the answers are reused: with the resolver gone, the next run still says listed.
    cache: ListingCache = runner.dnsbl
    assert len(cache) == 3
    dns.stop()
    try:
        again = run_one(runner)
    finally:
        dns.start()
    assert again.success, again.message
    assert again.receiver["sender_dnsbl"]["listed.test"] == "listed"


def test_unreachable_resolver_is_error_and_the_run_still_succeeds(
    mailstack: MailStack, mailbox: str, tmp_path: Path, dns: dnsstack.DNSStack
) -> None:
    silent = dnsstack.free_udp_tcp_port()  # nothing listens there: loopback, no answer
    conf = {"zones": ["listed.test"], "resolvers": ["127.0.0.1"], "resolver_port": silent, "timeout": 1}
    probe = roundtrip(mailstack, tmp_path, "blerr", mailbox, sender_dnsbl=conf)
    runner = make_runner(tmp_path, [probe])
    result = run_one(runner)
    assert result.success, result.message
    assert result.receiver["sender_dnsbl"] == {"listed.test": "error"}
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    assert 'mailcanary_roundtrip_sender_dnsbl_listed{probe="blerr"' not in text
    status = 'mailcanary_roundtrip_sender_dnsbl_status{probe="blerr",status="error",zone="listed.test"} 1.0'
    assert status in text


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        ({"zones": []}, "zones"),
        ({"zones": ["bad zone"]}, "zones"),
        ({"zones": ["a.test"], "resolvers": ["dns.example"]}, "resolvers"),
    ],
)
def test_bad_sender_dnsbl_config_is_one_clear_line(
    mailstack: MailStack, mailbox: str, tmp_path: Path, conf: dict[str, object], problem: str
) -> None:
    probe = roundtrip(mailstack, tmp_path, "blbad", mailbox, sender_dnsbl=conf)
    path = write_config(tmp_path, [probe])
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "sender_dnsbl" in text and problem in text and "\n" not in text.strip(), text
