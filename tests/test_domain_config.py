"""domain_checks in the config: the model, its one-line errors, and its place in the probe-kind table."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config import ConfigError, parse_config
from exporter.kinds.domain import domain_settings
from exporter.registry import configured, find, get, kinds

F = "mc.yml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, F)
    return err.value.problems


def test_a_full_entry_becomes_the_library_settings() -> None:
    text = """
domain_checks:
  - name: ex
    domain: Example.COM.
    interval: 1h
    timeout: 4s
    resolvers: [127.0.0.1, "::1"]
    resolver_port: 5353
    max_mx: 8
    max_addresses: 8
    dnsbl_zones: [Zen.Example.]
    helo: canary.example.net
    must_refuse: {enabled: true, mail_from_before_tls: true, local_recipient: abuse@example.com}
"""
    cfg = parse_config(text, F).config
    check = cfg.domain_checks[0]
    assert (check.domain, check.dnsbl_zones, cfg.interval_of(check)) == ("example.com", ["zen.example"], 3600)
    s = domain_settings(check)
    assert (s.domain, s.dns.nameservers, s.dns.port, s.dns.timeout) == (
        "example.com",
        ("127.0.0.1", "::1"),
        5353,
        4,
    )
    assert (s.max_hosts, s.max_addresses, s.dnsbl_zones) == (8, 8, ("zen.example",))
    assert (s.mx.port, s.mx.timeout, s.mx.helo_name, s.mx.check_plain_mail_from) == (
        25,
        4,
        "canary.example.net",
        True,
    )
    assert (s.must_refuse, s.local_recipient) == (True, "abuse@example.com")
    assert check.steps * check.timeout >= 4 * 8 * 8 / 4  # the deadline grows with the bound


def test_mail_from_before_tls_needs_must_refuse_enabled() -> None:
    text = "domain_checks:\n  - {name: ex, domain: example.com, must_refuse: {mail_from_before_tls: true}}\n"
    s = domain_settings(parse_config(text, F).config.domain_checks[0])
    assert (s.must_refuse, s.mx.check_plain_mail_from) == (False, False)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "domain: 'not a domain'",
            "domain_checks[0].domain: 'not a domain' is not a DNS name like example.com",
        ),
        (
            "domain: example.com, resolvers: [dns.google]",
            "domain_checks[0].resolvers: entry 0, 'dns.google', is not an IP address",
        ),
        (
            "domain: example.com, max_mx: 20, max_addresses: 8",
            "domain_checks[0]: max_mx x max_addresses is 160; at most 64 MX addresses are checked per domain",
        ),
        (
            "domain: example.com, max_mx: 0",
            "domain_checks[0].max_mx: Input should be greater than or equal to 1",
        ),
        (
            "domain: example.com, dnsbl_zones: [a.example, A.example.]",
            "domain_checks[0].dnsbl_zones: a zone is listed twice",
        ),
        ("domain: example.com, colour: red", "domain_checks[0].colour: unknown key"),
        ("domain: example.com, timeout: 0s", "domain_checks[0]: timeout must be > 0"),
        (
            "domain: example.com, must_refuse: {relay_sender: nope}",
            "domain_checks[0].must_refuse.relay_sender: must be a mail address like user@example.com",
        ),
        (
            "domain: example.com, ca_file: /nonexistent/ca.pem",
            "domain_checks[0].ca_file: cannot read /nonexistent/ca.pem",
        ),
    ],
)
def test_one_line_errors(entry: str, problem: str) -> None:
    assert problems(f"domain_checks:\n  - {{name: ex, {entry}}}\n") == [f"{F}: {problem}"]


def test_names_are_unique_across_kinds() -> None:
    text = """
tls_checks:
  - {name: same, host: mx.example.com, protocol: smtp}
domain_checks:
  - {name: same, domain: example.com}
"""
    assert problems(text) == [f"{F}: domain_checks[0].name: duplicate probe name 'same'"]


def test_every_kind_in_one_table() -> None:
    assert [k.name for k in kinds()] == ["roundtrip", "tls", "domain", "heartbeat", "reports"]
    assert [k.section for k in kinds()] == [
        "roundtrip",
        "tls_checks",
        "domain_checks",
        "heartbeats",
        "reports",
    ]
    text = """
tls_checks:
  - {name: t, host: mx.example.com, protocol: smtp, port: 25}
domain_checks:
  - {name: d, domain: example.com}
"""
    cfg = parse_config(text, F).config
    assert [(k.name, e.name) for k, e in configured(cfg)] == [("tls", "t"), ("domain", "d")]
    found = find(cfg, "d")
    assert found is not None and found[0] is get("domain")
    assert find(cfg, "nope") is None
    assert get("tls").endpoints(cfg.tls_checks[0]) == {"mx.example.com:25"}
    assert get("domain").endpoints(cfg.domain_checks[0]) == set()
    fams = get("domain").families({}, [])
    assert fams[0].name == "mailcanary_domain_check_success" and all(not f.samples for f in fams)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nope", "'nope' is not an IP address"),
        ("[127.0.0.2, nope]", "entry 1, 'nope', is not an IP address"),
        ("[127.0.0.2, 127.0.0.3]", "at most one IPv4 and one IPv6 address"),
        ("['::1', '2001:db8::1']", "at most one IPv4 and one IPv6 address"),
        ("[]", "an empty list; leave the key out for the default source"),
        ("5", "must be an IP address or a list of one IPv4 and one IPv6 address"),
    ],
)
def test_source_address_errors(value: str, problem: str) -> None:
    """issue 19: one address, or one per family; anything else is one line naming the key."""
    text = f"domain_checks:\n  - {{name: ex, domain: example.com, source_address: {value}}}\n"
    assert problems(text) == [f"{F}: domain_checks[0].source_address: {problem}"]


@pytest.mark.parametrize(
    ("value", "sources", "said"),
    [
        ("127.0.0.2", ("127.0.0.2",), "IPv4 from 127.0.0.2, IPv6 from the default source"),
        ("'::1'", ("::1",), "IPv4 from the default source, IPv6 from ::1"),
        ("['::1', 127.0.0.2]", ("::1", "127.0.0.2"), "IPv4 from 127.0.0.2, IPv6 from ::1"),
    ],
)
def test_source_address_per_family_and_what_check_config_says(
    value: str, sources: tuple[str, ...], said: str
) -> None:
    """issue 19: the single key still works; a list gives one source per family; check-config says which
    source each family will use (an IPv6 MX is never 'unreachable' for want of an IPv6 source)."""
    text = f"domain_checks:\n  - {{name: ex, domain: example.com, source_address: {value}}}\n"
    loaded = parse_config(text, F)
    assert domain_settings(loaded.config.domain_checks[0]).mx.source_address == sources
    assert loaded.notes == [
        f"{F}: domain_checks[0].source_address: MX addresses (and the MTA-STS, OCSP and CRL servers) are "
        f"connected {said}"
    ]
    assert parse_config("domain_checks:\n  - {name: ex, domain: example.com}\n", F).notes == []


def test_check_config_prints_the_source_notes(tmp_path: Path) -> None:
    import argparse
    import io

    from exporter.cli import _check

    cfg = tmp_path / "mc.yml"
    cfg.write_text(
        f"global: {{state_dir: {tmp_path}}}\n"
        "domain_checks:\n  - {name: ex, domain: example.com, source_address: 127.0.0.2}\n"
    )
    out = io.StringIO()
    assert _check(argparse.Namespace(config=str(cfg)), out) == 0
    assert (
        f"note: {cfg}: domain_checks[0].source_address: MX addresses (and the MTA-STS, OCSP and CRL servers) "
        "are connected IPv4 from 127.0.0.2, IPv6 from the default source"
    ) in out.getvalue().splitlines()
