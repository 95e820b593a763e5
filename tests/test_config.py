"""exporter.config: loading, one-line errors, secrets, defaults; and the check-config / probe / run
CLI."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from exporter import cli
from exporter.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    LoadedConfig,
    default_port,
    load_config,
    parse_config,
    state_dir,
)
from exporter.kinds.roundtrip import roundtrip_settings
from probes.clients.imap import IMAPSettings
from probes.roundtrip import POP3Settings
from tests.support.configs import ENV, F, edit, full_config, one_problem, problems_of

# ---- a good file ----------------------------------------------------------------------------------------


def test_full_config_loads(pw_file: Path) -> None:
    loaded = parse_config(full_config(pw_file), F, ENV)
    cfg = loaded.config
    assert loaded.path == F
    assert loaded.warnings == []
    assert re.fullmatch(r"[0-9a-f]{12}", loaded.digest)
    assert cfg.global_.interval == 300.0
    assert cfg.global_.timeout == 120.0
    assert [p.name for p in cfg.roundtrip] == ["imap-probe", "pop3.probe_2"]
    imap, pop = cfg.roundtrip
    assert (cfg.interval_of(imap), cfg.timeout_of(imap)) == (60.0, 30.0)
    assert (cfg.interval_of(pop), cfg.timeout_of(pop)) == (300.0, 120.0)  # from global
    assert imap.receive.protocol == "imap"
    assert imap.receive.mailbox == "Canaries"
    assert imap.receive.port is None  # resolved later from protocol and tls
    assert imap.smtp.tls == "starttls"
    assert pop.receive.protocol == "pop3"
    assert pop.smtp.port == 25
    assert pop.smtp.username is None
    assert loaded.secrets == {
        ("imap-probe", "smtp"): "file-secret",  # trailing newline of the file stripped
        ("imap-probe", "receive"): "env-secret",
        ("pop3.probe_2", "receive"): "env-secret",
    }
    assert loaded.password("imap-probe", "smtp") == "file-secret"
    assert sorted(loaded.all_secrets()) == [
        ("canary@example.com", "file-secret"),
        ("inbox@example.net", "env-secret"),
        ("pop@example.net", "env-secret"),
    ]
    assert "file-secret" not in repr(loaded)
    assert "env-secret" not in repr(loaded)


def test_digest_follows_the_text(pw_file: Path) -> None:
    a = parse_config(full_config(pw_file), F, ENV).digest
    b = parse_config(full_config(pw_file), F, ENV).digest
    c = parse_config(full_config(pw_file).replace("interval: 5m", "interval: 6m"), F, ENV).digest
    assert a == b
    assert a != c


@pytest.mark.parametrize("text", ["", "\n", "# nothing here\n", "---\n", "null\n", "~\n"])
def test_empty_document_is_an_error(text: str) -> None:
    """A reload that reads a truncated file must not stop every probe."""
    assert one_problem(text) == (
        f"{F}: (top level): the file is empty (a truncated write?); a config with no probes says so "
        "explicitly, e.g. `roundtrip: []`"
    )


@pytest.mark.parametrize("text", ["roundtrip: []\n", "{}\n", "global: {}\n", "roundtrip:\n"])
def test_explicitly_empty_config_is_fine(text: str) -> None:
    loaded = parse_config(text, F, {})
    assert loaded.config.roundtrip == []
    assert loaded.config.global_.interval == 300.0


@pytest.mark.parametrize(
    ("text", "where", "key", "first"),
    [
        ("global: {}\nroundtrip: []\nglobal: {interval: 1m}\n", "line 3, column 1", "global", 1),
        ("global:\n  interval: 1m\n  timeout: 10s\n  interval: 2m\n", "line 4, column 3", "interval", 2),
        ("roundtrip:\n  - name: a\n    sender: x@y.z\n    name: b\n", "line 4, column 5", "name", 2),
        ("global: {interval: 1m, interval: 2m}\n", "line 1, column 24", "interval", 1),
    ],
)
def test_duplicate_keys_are_errors_with_their_line(text: str, where: str, key: str, first: int) -> None:
    assert one_problem(text) == (
        f"{F}: {where}: invalid YAML: duplicate key {key!r} (first given on line {first})"
    )


def test_merge_keys_are_not_duplicates() -> None:
    text = "global: &g {interval: 1m}\nmodules:\n  m: {protocol: smtp}\n"
    assert parse_config(text, F, {}).config.global_.interval == 60.0


def test_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    problem = one_problem("\n".join(lines) + "\n")
    assert problem == f"{F}: (top level): more than 1000000 values once aliases are expanded"


def test_oversized_file_is_refused_without_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    with open(path, "w") as fh:
        fh.write("roundtrip:\n")
        fh.write("  - {name: x, sender: a@b.c}\n" * (MAX_CONFIG_BYTES // 20))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [
        f"{path}: (file): bigger than 4 MiB ({MAX_CONFIG_BYTES} bytes); not a config?"
    ]


def test_file_just_under_the_cap_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    path.write_text("roundtrip: []\n" + "#" * (MAX_CONFIG_BYTES - 20) + "\n")
    assert load_config(str(path)).config.roundtrip == []


def test_inline_password_loads_with_a_warning(pw_file: Path) -> None:
    text = full_config(pw_file).replace(
        "password_env: RECV_PW\n      mailbox", "password: hunter2\n      mailbox"
    )
    loaded = parse_config(text, F, ENV)
    assert loaded.password("imap-probe", "receive") == "hunter2"
    assert loaded.warnings == [
        f"{F}: roundtrip[0].receive.password: inline password; prefer password_file or password_env"
    ]
    assert "hunter2" not in repr(loaded.config)


def test_timeout_longer_than_interval_warns(pw_file: Path) -> None:
    loaded = parse_config(full_config(pw_file).replace("timeout: 30s", "timeout: 2m"), F, ENV)
    assert loaded.warnings == [
        f"{F}: roundtrip[0].timeout: longer than the interval; a run that overruns skips the next slot"
    ]


def test_password_file_crlf_is_stripped(tmp_path: Path, pw_file: Path) -> None:
    pw_file.write_bytes(b"with space \r\n")
    loaded = parse_config(full_config(pw_file), F, ENV)
    assert loaded.password("imap-probe", "smtp") == "with space "


# ---- one line per problem -------------------------------------------------------------------------------


def test_unknown_top_level_key(pw_file: Path) -> None:
    assert one_problem(full_config(pw_file) + "bogus: 1\n") == f"{F}: bogus: unknown key"


def test_unknown_global_key(pw_file: Path) -> None:
    text = edit(pw_file, "  timeout: 2m\n", "  timeout: 2m\n  intervall: 3m\n")
    assert one_problem(text) == f"{F}: global.intervall: unknown key"


def test_unknown_probe_key(pw_file: Path) -> None:
    text = edit(pw_file, "    interval: 1m\n", "    interval: 1m\n    retries: 3\n")
    assert one_problem(text) == f"{F}: roundtrip[0].retries: unknown key"


def test_unknown_smtp_key(pw_file: Path) -> None:
    text = edit(pw_file, "      tls: none\n", "      tls: none\n      hello: x\n")
    assert one_problem(text) == f"{F}: roundtrip[1].smtp.hello: unknown key"


def test_unknown_receive_key(pw_file: Path) -> None:
    text = edit(pw_file, "      mailbox: Canaries\n", "      mailbox: Canaries\n      folder: X\n")
    assert one_problem(text) == f"{F}: roundtrip[0].receive.folder: unknown key"


def test_unknown_tls_config_key(pw_file: Path) -> None:
    text = edit(pw_file, "      tls: implicit\n", "      tls: implicit\n      tls_config:\n        ca: /x\n")
    assert one_problem(text) == f"{F}: roundtrip[0].receive.tls_config.ca: unknown key"


def test_wrong_tls_mode(pw_file: Path) -> None:
    text = edit(pw_file, "tls: starttls", "tls: ssl")
    assert one_problem(text) == f"{F}: roundtrip[0].smtp.tls: must be 'implicit', 'starttls' or 'none'"


def test_wrong_protocol(pw_file: Path) -> None:
    text = edit(pw_file, "protocol: pop3", "protocol: jmap")
    assert one_problem(text) == f"{F}: roundtrip[1].receive.protocol: must be 'imap' or 'pop3'"


def test_bad_global_duration(pw_file: Path) -> None:
    text = edit(pw_file, "interval: 5m", "interval: 5x")
    assert one_problem(text) == (
        f"{F}: global.interval: '5x' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)"
    )


def test_bad_probe_duration(pw_file: Path) -> None:
    text = edit(pw_file, "timeout: 30s", "timeout: soon")
    assert one_problem(text) == (
        f"{F}: roundtrip[0].timeout: 'soon' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)"
    )


def test_bad_nested_duration(pw_file: Path) -> None:
    text = edit(pw_file, "      mailbox: Canaries\n", "      mailbox: Canaries\n      poll_max: [1s]\n")
    assert (
        one_problem(text) == f"{F}: roundtrip[0].receive.poll_max: expected a duration such as 30s, 5m or 1h"
    )


@pytest.mark.parametrize("value", ["yes", "true"])
def test_boolean_duration(pw_file: Path, value: str) -> None:
    text = edit(pw_file, "interval: 5m", f"interval: {value}")
    assert one_problem(text) == f"{F}: global.interval: expected a duration such as 30s, 5m or 1h"


def test_huge_integer_duration_is_a_config_error(pw_file: Path) -> None:
    text = edit(pw_file, "interval: 5m", "interval: " + "9" * 400)
    line = one_problem(text)
    assert line.startswith(f"{F}: global.interval: ")
    assert "finite" in line


def test_interval_below_one_second(pw_file: Path) -> None:
    text = edit(pw_file, "interval: 1m", "interval: 500ms")
    assert one_problem(text) == f"{F}: roundtrip[0].interval: must be at least 1s"


def test_missing_required_key(pw_file: Path) -> None:
    text = edit(pw_file, "      host: smtp.example.com\n", "")
    assert one_problem(text) == f"{F}: roundtrip[0].smtp.host: required key is missing"


def test_missing_receive_section(pw_file: Path) -> None:
    text = full_config(pw_file)
    text = text[: text.index("    receive:\n      protocol: pop3")]
    assert one_problem(text) == f"{F}: roundtrip[1].receive: required key is missing"


def test_duplicate_probe_names(pw_file: Path) -> None:
    text = edit(pw_file, "name: pop3.probe_2", "name: imap-probe")
    assert one_problem(text) == f"{F}: roundtrip[1].name: duplicate probe name 'imap-probe'"


@pytest.mark.parametrize("name", ["-starts-with-dash", "has space", "ü-umlaut", "x" * 64, "''", "a/b"])
def test_bad_probe_name(pw_file: Path, name: str) -> None:
    text = edit(pw_file, "name: imap-probe", f"name: {name}")
    assert one_problem(text) == (
        f"{F}: roundtrip[0].name: must be 1-63 characters of letters, digits, '_', '.', '-', "
        "starting alphanumeric"
    )


def test_probe_name_of_63_characters_is_fine(pw_file: Path) -> None:
    loaded = parse_config(edit(pw_file, "name: imap-probe", "name: " + "n" * 63), F, ENV)
    assert loaded.config.roundtrip[0].name == "n" * 63


@pytest.mark.parametrize("address", ["not-an-address", "two@at@example.com", "'<x@example.com>'", "a b@c"])
def test_bad_mail_address(pw_file: Path, address: str) -> None:
    text = edit(pw_file, "recipient: inbox@example.net", f"recipient: {address}")
    assert one_problem(text) == f"{F}: roundtrip[0].recipient: must be a mail address like user@example.com"


def test_password_file_missing(pw_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pw"
    text = full_config(pw_file).replace(str(pw_file), str(missing))
    assert one_problem(text) == (
        f"{F}: roundtrip[0].smtp.password_file: cannot read {missing}: No such file or directory"
    )


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n"])
def test_password_file_empty(pw_file: Path, content: bytes) -> None:
    pw_file.write_bytes(content)
    assert one_problem(full_config(pw_file)) == f"{F}: roundtrip[0].smtp.password_file: {pw_file} is empty"


def test_password_env_unset(pw_file: Path) -> None:
    problems = problems_of(full_config(pw_file), environ={})
    # Both probes read RECV_PW: one line for each, each naming its own key.
    assert problems == [
        f"{F}: roundtrip[0].receive.password_env: environment variable RECV_PW is not set or empty",
        f"{F}: roundtrip[1].receive.password_env: environment variable RECV_PW is not set or empty",
    ]


def test_password_env_empty(pw_file: Path) -> None:
    assert len(problems_of(full_config(pw_file), environ={"RECV_PW": ""})) == 2


def test_two_password_sources(pw_file: Path) -> None:
    text = edit(
        pw_file,
        "      password_env: RECV_PW\n      mailbox",
        "      password_env: RECV_PW\n      password: x\n      mailbox",
    )
    assert one_problem(text) == (
        f"{F}: roundtrip[0].receive: give only one of password, password_file, password_env "
        "(got password, password_env)"
    )


def test_username_without_password(pw_file: Path) -> None:
    text = edit(pw_file, f"      password_file: {pw_file}\n", "")
    assert one_problem(text) == (
        f"{F}: roundtrip[0].smtp: username given without password_file, password_env, password or oauth"
    )


def test_password_without_username(pw_file: Path) -> None:
    text = edit(pw_file, "      username: canary@example.com\n", "")
    assert one_problem(text) == f"{F}: roundtrip[0].smtp: a password needs a username"


def test_credentials_over_plaintext(pw_file: Path) -> None:
    text = edit(pw_file, "tls: starttls\n      username: canary", "tls: none\n      username: canary")
    assert one_problem(text) == (
        f"{F}: roundtrip[0].smtp: credentials over tls: none would travel in clear text; use starttls "
        "or implicit, or set allow_plaintext_auth: true"
    )


def test_credentials_over_plaintext_allowed_explicitly(pw_file: Path) -> None:
    text = edit(
        pw_file,
        "tls: starttls\n      username: canary",
        "tls: none\n      allow_plaintext_auth: true\n      username: canary",
    )
    loaded = parse_config(text, F, ENV)
    assert loaded.config.roundtrip[0].smtp.tls == "none"
    assert loaded.config.roundtrip[0].smtp.allow_plaintext_auth is True


def test_cert_file_without_key_file(pw_file: Path) -> None:
    text = edit(
        pw_file,
        "      tls: implicit\n",
        f"      tls: implicit\n      tls_config:\n        cert_file: {pw_file}\n",
    )
    assert one_problem(text) == f"{F}: roundtrip[0].receive.tls_config: cert_file and key_file go together"


def test_unreadable_ca_file(pw_file: Path, tmp_path: Path) -> None:
    # A missing file: permission bits would not stop root, which the test may run as.
    ca = tmp_path / "missing-ca.pem"
    text = edit(pw_file, "      tls: none\n", f"      tls: none\n      tls_config:\n        ca_file: {ca}\n")
    assert one_problem(text) == f"{F}: roundtrip[1].smtp.tls_config.ca_file: cannot read {ca}"


def test_readable_tls_files_load(pw_file: Path) -> None:
    text = edit(
        pw_file,
        "      tls: implicit\n",
        f"      tls: implicit\n      tls_config:\n        ca_file: {pw_file}\n        cert_file: {pw_file}\n"
        f"        key_file: {pw_file}\n        server_name: imap.internal\n",
    )
    tc = parse_config(text, F, ENV).config.roundtrip[0].receive.tls_config
    assert (tc.ca_file, tc.cert_file, tc.key_file, tc.server_name) == (
        str(pw_file),
        str(pw_file),
        str(pw_file),
        "imap.internal",
    )


def test_unreadable_canary_key_file(pw_file: Path, tmp_path: Path) -> None:
    key = tmp_path / "missing.key"
    text = edit(pw_file, "  timeout: 2m\n", f"  timeout: 2m\n  canary_key_file: {key}\n")
    assert one_problem(text) == f"{F}: global.canary_key_file: cannot read {key}"


def test_pop3_with_mailbox(pw_file: Path) -> None:
    text = edit(pw_file, "protocol: pop3\n", "protocol: pop3\n      mailbox: Other\n")
    assert (
        one_problem(text)
        == f"{F}: roundtrip[1].receive: mailbox is an IMAP setting; POP3 always reads the inbox"
    )


def test_port_out_of_range(pw_file: Path) -> None:
    text = edit(pw_file, "port: 25", "port: 70000")
    line = one_problem(text)
    assert line.startswith(f"{F}: roundtrip[1].smtp.port: ")
    assert "65535" in line


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (
            "global:\n  interval: [5m\n",
            "line 3, column 1",
            "invalid YAML: expected ',' or ']', but got '<stream end>'",
        ),
        ("a: b\n c: d\n", "line 2, column 3", "invalid YAML: mapping values are not allowed here"),
        (
            "global:\n\tinterval: 5m\n",
            "line 2, column 1",
            "invalid YAML: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_yaml_syntax_error(text: str, where: str, problem: str) -> None:
    assert one_problem(text) == f"{F}: {where}: {problem}"


def test_yaml_value_error_is_a_config_error() -> None:
    # PyYAML raises ValueError (not YAMLError) for an impossible timestamp.
    line = one_problem("global:\n  state_dir: 2024-13-45\n")
    assert line.startswith(f"{F}: ")
    assert "month must be in 1..12" in line


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(text: str) -> None:
    assert one_problem(text) == f"{F}: (top level): must be a mapping with keys global, roundtrip, tls_checks"


def test_several_problems_one_line_each(pw_file: Path) -> None:
    text = edit(pw_file, "interval: 5m", "interval: 5x")
    text = text.replace("recipient: pop@example.net", "recipient: nobody")
    problems = problems_of(text)
    assert problems == [
        f"{F}: global.interval: '5x' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)",
        f"{F}: roundtrip[1].recipient: must be a mail address like user@example.com",
    ]


# ---- load_config, defaults ------------------------------------------------------------------------------


def test_load_config_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"{path}: (file): not found"]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    (line,) = info.value.problems
    assert line.startswith(f"{tmp_path}: (file): cannot read: ")


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yml"
    path.write_bytes(b"global:\n  state_dir: /tmp/\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problems == [f"{path}: (file): not UTF-8 text"]


def test_load_config_reads_the_file(tmp_path: Path, pw_file: Path) -> None:
    path = tmp_path / "mailcanary.yml"
    path.write_text(full_config(pw_file), encoding="utf-8")
    loaded = load_config(str(path), ENV)
    assert loaded.path == str(path)
    assert len(loaded.config.roundtrip) == 2


def test_load_config_names_the_file_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("bogus: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), {})
    assert info.value.problems == [f"{path}: bogus: unknown key"]


@pytest.mark.parametrize(
    ("protocol", "tls", "port"),
    [
        ("smtp", "implicit", 465),
        ("smtp", "starttls", 587),
        ("smtp", "none", 25),
        ("imap", "implicit", 993),
        ("imap", "starttls", 143),
        ("imap", "none", 143),
        ("pop3", "implicit", 995),
        ("pop3", "starttls", 110),
        ("pop3", "none", 110),
    ],
)
def test_default_port(protocol: str, tls: str, port: int) -> None:
    assert default_port(protocol, tls) == port


def test_default_ports_reach_the_probe_settings(pw_file: Path) -> None:
    loaded = parse_config(full_config(pw_file), F, ENV)
    imap, pop = loaded.config.roundtrip
    s1 = roundtrip_settings(loaded, imap, b"k" * 32)
    assert s1.smtp.endpoint.port == 587  # starttls, no port given
    assert isinstance(s1.receiver, IMAPSettings)
    assert s1.receiver.endpoint.port == 993  # implicit
    assert s1.receiver.mailbox == "Canaries"
    s2 = roundtrip_settings(loaded, pop, b"k" * 32)
    assert s2.smtp.endpoint.port == 25  # given explicitly
    assert isinstance(s2.receiver, POP3Settings)
    assert s2.receiver.endpoint.port == 110  # pop3 starttls


def _loaded(state: str | None = None) -> LoadedConfig:
    text = f"global:\n  state_dir: {state}\n" if state else "roundtrip: []\n"
    return parse_config(text, F, {})


def test_state_dir_key_wins(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/sd", "XDG_STATE_HOME": "/xdg"}
    assert state_dir(_loaded("/srv/state").config, env) == Path("/srv/state")


def test_state_dir_systemd_next() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/mailcanary:/var/lib/other", "XDG_STATE_HOME": "/xdg"}
    assert state_dir(_loaded().config, env) == Path("/var/lib/mailcanary")


def test_state_dir_xdg_next() -> None:
    assert state_dir(_loaded().config, {"XDG_STATE_HOME": "/xdg", "STATE_DIRECTORY": ""}) == Path(
        "/xdg/mailcanary"
    )


def test_state_dir_home_last(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir(_loaded().config, {}) == tmp_path / ".local" / "state" / "mailcanary"


def test_state_dir_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/run/sd-state")
    assert state_dir(_loaded().config) == Path("/run/sd-state")


# ---- the command line -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """cli.main() configures structlog and the root logger onto the captured stderr; undo that."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy = {
        n: logging.getLogger(n).level for n in ("aioimaplib", "apscheduler", "aiohttp.access", "mail.log")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.reset_defaults()


@pytest.fixture
def good_file(tmp_path: Path, pw_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECV_PW", "env-secret")
    path = tmp_path / "good.yml"
    path.write_text(full_config(pw_file), encoding="utf-8")
    return path


@pytest.fixture
def bad_file(tmp_path: Path, pw_file: Path) -> Path:
    path = tmp_path / "bad.yml"
    text = (
        full_config(pw_file).replace("interval: 5m", "interval: 5x").replace("tls: starttls", "tls: tls", 1)
    )
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_check_config_ok(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "--config", str(good_file)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == f"{good_file}: ok (2 round-trip probes, 0 TLS checks)"
    # The POP3 probe: its server's LOGIN-DELAY is not known before a run, and check-config says so.
    (note,) = out.splitlines()[:-1]
    assert note.startswith(f"note: {good_file}: roundtrip[1].receive: a POP3 server's LOGIN-DELAY")
    assert "Traceback" not in err


def test_cli_check_config_prints_warnings(
    tmp_path: Path, pw_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECV_PW", "env-secret")
    path = tmp_path / "inline.yml"
    text = full_config(pw_file).replace("password_env: RECV_PW\n      mailbox", "password: x\n      mailbox")
    path.write_text(text, encoding="utf-8")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"warning: {path}: roundtrip[0].receive.password: inline password; "
        "prefer password_file or password_env",
        f"note: {path}: roundtrip[1].receive: a POP3 server's LOGIN-DELAY is learnt at the first run; if "
        "it exceeds the interval (300s) the daemon logs pop3_login_delay_exceeds_interval "
        "(see mailcanary_receive_login_delay_seconds)",
        f"{path}: ok (2 round-trip probes, 0 TLS checks)",
    ]


def test_cli_check_config_bad(
    bad_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECV_PW", "env-secret")
    assert cli.main(["check-config", "--config", str(bad_file)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{bad_file}: global.interval: '5x' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)",
        f"{bad_file}: roundtrip[0].smtp.tls: must be 'implicit', 'starttls' or 'none'",
    ]
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "text",
    [
        "a: [\n",
        "- 1\n",
        "global:\n  interval: " + "9" * 400 + "\n",
        "global:\n  state_dir: 2024-13-45\n",
        "\x00",
    ],
)
def test_cli_check_config_never_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = tmp_path / "weird.yml"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["check-config", "--config", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: ")
    assert "Traceback" not in out + err


def test_cli_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "absent.yml"
    assert cli.main(["check-config", "--config", str(path)]) == 1
    out, _ = capsys.readouterr()
    assert out == f"{path}: (file): not found\n"


def test_cli_probe_with_bad_config_is_unknown(
    bad_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECV_PW", "env-secret")
    assert cli.main(["probe", "--config", str(bad_file)]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{bad_file}: global.interval: '5x' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)",
        f"{bad_file}: roundtrip[0].smtp.tls: must be 'implicit', 'starttls' or 'none'",
    ]


def test_cli_probe_unknown_name_is_unknown(good_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--config", str(good_file), "nope"]) == 3
    _, err = capsys.readouterr()
    assert (
        err == f"{good_file}: no probe, TLS check, domain check, heartbeat or reports mailbox named 'nope' "
        "(have: imap-probe, pop3.probe_2)\n"
    )


def test_cli_run_with_missing_default_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nowhere" / "mailcanary.yml"
    monkeypatch.setenv("MAILCANARY_CONFIG", str(path))
    assert cli.main(["run"]) == 3
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: (file): not found")
    assert "mailcanary demo" in lines[0]
    assert "--config" in lines[0]


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 3
    _, err = capsys.readouterr()
    assert "usage: mailcanary" in err


def test_structure_and_secret_problems_are_listed_in_one_run() -> None:
    text = """
roundtrip:
  - name: a
    intervall: 5m
    sender: a@example.test
    recipient: a@example.test
    smtp: {host: h, username: u, password_file: /nonexistent/pw}
    receive: {protocol: imap, host: h, username: u, password_env: MAILCANARY_TEST_UNSET}
  - name: a
    sender: a@example.test
    recipient: a@example.test
    smtp: {host: h}
    receive: {protocol: imap, host: h, username: u, password: x}
"""
    with pytest.raises(ConfigError) as err:
        parse_config(text, F, {})
    assert err.value.problems == [
        f"{F}: roundtrip[0].intervall: unknown key",
        f"{F}: roundtrip[0].smtp.password_file: cannot read /nonexistent/pw: No such file or directory",
        f"{F}: roundtrip[0].receive.password_env: environment variable MAILCANARY_TEST_UNSET "
        "is not set or empty",
        f"{F}: roundtrip[1].name: duplicate probe name 'a'",
    ]


def test_inline_password_keeps_its_spaces_and_stays_out_of_the_digest() -> None:
    def config(password: str) -> str:
        return f"""
roundtrip:
  - name: a
    sender: a@example.test
    recipient: a@example.test
    smtp: {{host: h}}
    receive: {{protocol: imap, host: h, username: u, password: '{password}'}}
"""

    one, two = parse_config(config("  secret one "), F, {}), parse_config(config("other"), F, {})
    assert one.password("a", "receive") == "  secret one "
    assert one.digest == two.digest  # the digest is exported: it must not depend on a password


def test_check_config_reports_an_unusable_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "mc.yml"
    config.write_text(f"global: {{state_dir: {blocker}/state}}\n")
    assert cli.main(["check-config", "--config", str(config)]) == 1
    assert (
        capsys.readouterr().out
        == f"{config}: global.state_dir: cannot create or write {blocker}/state (as this user)\n"
    )


def test_command_line_typos_exit_3_not_nagios_critical() -> None:
    for argv in (["probe", "--warn-days", "abc"], ["run", "--no-such-flag"], ["nonsense"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 3, argv


def test_the_shipped_example_config_is_valid(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    text = (root / "examples" / "mailcanary.yml").read_text()
    pw, ca = tmp_path / "pw", tmp_path / "ca.pem"
    pw.write_text("secret\n")
    ca.write_text("")
    text = text.replace("/etc/mailcanary/canary.password", str(pw)).replace(
        "/etc/ssl/certs/internal-ca.pem", str(ca)
    )
    env = {"MAILCANARY_SMTP_PASSWORD": "a", "MAILCANARY_POP_PASSWORD": "b"}
    loaded = parse_config(text, "examples/mailcanary.yml", env)
    assert [p.name for p in loaded.config.roundtrip] == ["corp-imap", "corp-pop3"]
    assert loaded.warnings == []


def test_check_config_refuses_a_key_file_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config runs the start-up checks of run: a 4-byte canary_key_file is an error, exit 1."""
    key = tmp_path / "short.key"
    key.write_bytes(b"abcd")
    config = tmp_path / "mc.yml"
    config.write_text(f"global: {{state_dir: {tmp_path}/state, canary_key_file: {key}}}\nroundtrip: []\n")
    assert cli.main(["check-config", "--config", str(config)]) == 1
    assert capsys.readouterr().out == (
        f"{config}: global.canary_key_file: {key} holds 4 bytes; need at least 16 "
        f"(e.g. `openssl rand -hex 32 > {key}`)\n"
    )
    assert not (tmp_path / "state").exists()  # checked, nothing created


def test_check_config_refuses_a_short_generated_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "canary.key").write_bytes(b"")
    config = tmp_path / "mc.yml"
    config.write_text(f"global: {{state_dir: {state}}}\nroundtrip: []\n")
    assert cli.main(["check-config", "--config", str(config)]) == 1
    assert f"delete {state / 'canary.key'} to have a new one generated" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "probe_endpoint: {allow_targets: ['10.0.0.0/33']}\n",
            f"{F}: probe_endpoint.allow_targets: entry 0, '10.0.0.0/33', is not a CIDR like 192.0.2.0/24",
        ),
        (
            "probe_endpoint: {allow_targets: ['a b']}\n",
            f"{F}: probe_endpoint.allow_targets: entry 0, 'a b', is neither a host pattern (letters, digits, "
            "'.', '-', '*', '?') nor a CIDR",
        ),
        (
            "probe_endpoint: {allow_modules: [nope]}\n",
            f"{F}: probe_endpoint.allow_modules[0]: no module named 'nope'",
        ),
        (
            "probe_endpoint: {max_concurrent: 0}\n",
            f"{F}: probe_endpoint.max_concurrent: Input should be greater than or equal to 1",
        ),
        ("probe_endpoint: {bogus: 1}\n", f"{F}: probe_endpoint.bogus: unknown key"),
    ],
)
def test_probe_endpoint_problems(text: str, problem: str) -> None:
    assert one_problem(text) == problem


def test_probe_endpoint_matching() -> None:
    text = "probe_endpoint: {allow_targets: ['*.Example.com', '192.0.2.0/24', '2001:db8::/32', 'mx.test']}\n"
    rules = parse_config(text, F, {}).config.probe_endpoint
    assert rules.target_allowed("mx.example.com") and rules.target_allowed("MX.EXAMPLE.COM.")
    assert (
        rules.target_allowed("192.0.2.7")
        and rules.target_allowed("2001:db8::1")
        and rules.target_allowed("mx.test")
    )
    assert not rules.target_allowed("example.com")  # the pattern needs a label before it
    assert not rules.target_allowed("192.0.3.1") and not rules.target_allowed("::1")
    assert not rules.target_allowed("evil.mx.test")
    assert not rules.target_allowed("localhost")  # a name is never admitted by a CIDR
    assert parse_config("roundtrip: []\n", F, {}).config.probe_endpoint.target_allowed("anything")
