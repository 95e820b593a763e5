"""The ``mailcanary`` command: run (daemon), probe (one-shot, Nagios exit codes), check-config, demo,
generate (rules and dashboards for another scrape job)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn, TextIO

from exporter import generate, logs, registry
from exporter.buildinfo import version_text
from exporter.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    LoadedConfig,
    load_config,
    parse_shard,
    state_dir,
)
from exporter.daemon import Daemon
from exporter.demo import command as demo
from exporter.run.report import warning as junk_warning
from exporter.run.results import ResultStore, RunResult
from exporter.run.runner import Runner, make_masker, revocations
from exporter.state.ledger import Ledger, key_problem, load_or_create_key
from exporter.stopwatch import StopWatch
from exporter.web.webconfig import load_web_config

if TYPE_CHECKING:
    from probes.tls.hygiene import Hygiene
    from probes.wire.certs import TLSFacts

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3  # Nagios plugin convention
EXIT_USAGE = 3


def _default_config() -> str:
    return os.environ.get("MAILCANARY_CONFIG", DEFAULT_CONFIG_PATH)


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 3 (UNKNOWN), not argparse's 2, which a Nagios-style caller reads as CRITICAL."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _Version(argparse.Action):
    """Print the multi-line build report as is (argparse's own version action rewraps it) and exit 0."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> NoReturn:
        print(version_text())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mailcanary",
        description="Mail-delivery monitor: canary round trips and TLS audits, exported to Prometheus.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print version, revision, branch, build date, Python"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config.file",
            "--config",
            "-c",
            dest="config",
            default=None,
            metavar="FILE",
            help=f"configuration file (default: $MAILCANARY_CONFIG or {DEFAULT_CONFIG_PATH}); alias --config",
        )
        logs.add_log_flags(
            p,
            "info",
            level_help="lowest level logged (default info); alias --log-level",
            format_help="log format (default: console on a TTY, JSON otherwise); alias --log-format",
        )

    run = sub.add_parser("run", help="run the exporter daemon")
    common(run)
    run.add_argument(
        "--web.listen-address",
        "--listen",
        dest="listen",
        default=":9925",
        metavar="[HOST]:PORT",
        help="HTTP listen address for /metrics (default :9925, all interfaces); alias --listen",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config",
        default=None,
        metavar="FILE",
        help="TLS and basic auth for every endpoint (Prometheus exporter-toolkit format)",
    )
    run.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="run only the probes whose name hashes to share i of N (overrides global.shard)",
    )
    run.add_argument(
        "--vantage",
        default=None,
        metavar="NAME",
        help="add vantage=NAME to every mailcanary_* series (overrides global.vantage)",
    )
    probe = sub.add_parser(
        "probe", help="run probes once, print a report, exit 0 OK / 1 warning / 2 failed / 3 error"
    )
    common(probe)
    probe.set_defaults(log_level="warning")  # the report says it all; logs only for trouble
    probe.add_argument("names", nargs="*", metavar="NAME", help="probes to run (default: all)")
    probe.add_argument("--debug", action="store_true", help="print the protocol dialogue (secrets masked)")
    probe.add_argument(
        "--warn-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="exit 1 (WARNING) if a certificate expires within DAYS",
    )
    probe.add_argument(
        "--crit-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="exit 2 (CRITICAL) if a certificate expires within DAYS",
    )
    check = sub.add_parser("check-config", help="validate a configuration file")
    common(check)
    sub.add_parser("config-schema", help="print the JSON Schema of the configuration file (for editors)")
    demo.add_arguments(
        sub.add_parser("demo", help="see it work: the daemon on a built-in sandbox mail server")
    )
    generate.add_arguments(
        sub.add_parser(
            "generate", help="print the shipped alert rules, SLO rules or dashboards for your scrape job"
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command == "config-schema":
        from exporter.config.schema import config_schema_text

        sys.stdout.write(config_schema_text())
        return EXIT_OK
    if args.command == "generate":
        return generate.run(args)
    logs.configure(args.log_format, args.log_level)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "demo":
            return demo.main(args)
        if args.command == "probe":
            return asyncio.run(_probe(args, sys.stdout))
        return _check(args, sys.stdout)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_UNKNOWN
    except KeyboardInterrupt:
        return 130


def _config_path(args: argparse.Namespace, for_run: bool = False) -> str:
    path: str = args.config or _default_config()
    if args.config is None and not os.path.exists(path):
        hint = " or try `mailcanary demo` to see it work against a built-in sandbox" if for_run else ""
        raise ConfigError([f"{path}: (file): not found; pass --config FILE{hint}"])
    return path


def _run(args: argparse.Namespace) -> int:
    path = _config_path(args, for_run=True)
    try:
        from exporter.web.server import parse_listen

        parse_listen(args.listen)
    except ValueError as exc:
        print(f"mailcanary: {exc}", file=sys.stderr)
        return EXIT_USAGE
    web_config = load_web_config(args.web_config) if args.web_config else None
    if args.shard:
        try:
            parse_shard(args.shard)
        except ValueError as exc:
            print(f"mailcanary: --shard: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.vantage and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,63}", args.vantage):
        print("mailcanary: --vantage: 1-63 of letters, digits, '_', '.', ':', '-'", file=sys.stderr)
        return EXIT_USAGE
    daemon = Daemon(
        path,
        args.listen,
        web_config=web_config,
        shard=args.shard,
        vantage=args.vantage,
        stopwatch=StopWatch(),
    )
    try:
        asyncio.run(daemon.run_forever())
    except OSError as exc:  # e.g. the listen port is taken
        print(f"mailcanary: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    return EXIT_OK


def _check(args: argparse.Namespace, out: TextIO) -> int:
    try:
        path = _config_path(args)
        loaded = load_config(path)
        problems = [p for p in (_state_dir_problem(loaded), _key_problem(loaded)) if p]
        if problems:
            raise ConfigError(problems)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        return 1
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=out)
    for note in loaded.notes:
        print(f"note: {note}", file=out)
    cfg = loaded.config
    counts = []
    for kind in registry.kinds():
        entries = kind.entries(cfg)
        if kind.notes is not None:
            for i, entry in enumerate(entries):
                for note in kind.notes(cfg, entry, f"{kind.section}[{i}]"):
                    print(f"note: {path}: {note}", file=out)
        if entries or kind.count_zero:
            counts.append(f"{len(entries)} {kind.plural}")
    print(f"{path}: ok ({', '.join(counts)})", file=out)
    return EXIT_OK


def _key_problem(loaded: LoadedConfig) -> str | None:
    """The key checks ``run`` makes at start (length of canary_key_file, a short generated key)."""
    cfg = loaded.config
    return key_problem(cfg.global_.canary_key_file, state_dir(cfg), loaded.path)


def _state_dir_problem(loaded: LoadedConfig) -> str | None:
    """Would ``run`` be able to keep its key and ledger there? Checked without writing anything."""
    directory = state_dir(loaded.config)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if loaded.config.global_.canary_key_file is None and not (
        probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    ):
        return f"{loaded.path}: global.state_dir: cannot create or write {directory} (as this user)"
    return None


async def _probe(args: argparse.Namespace, out: TextIO) -> int:
    loaded = load_config(_config_path(args))
    cfg = loaded.config
    known = {entry.name: (kind, entry) for kind, entry in registry.configured(cfg)}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        have = ", ".join(known) or "none"
        what = registry.nouns([k.noun for k in registry.kinds()])
        raise ConfigError([f"{loaded.path}: no {what} named {n!r} (have: {have})" for n in unknown])
    selected = [known[n] for n in args.names] if args.names else list(known.values())
    if not selected:
        what = registry.nouns([k.plural for k in registry.kinds()])
        raise ConfigError([f"{loaded.path}: (top level): no {what} configured"])
    state = state_dir(cfg)
    key = load_or_create_key(cfg.global_.canary_key_file, state, loaded.path)
    ledger = await asyncio.to_thread(Ledger, state / "ledger.json")
    runner = Runner(loaded=loaded, key=key, ledger=ledger, store=ResultStore(), masker=make_masker(loaded))
    logs.set_masker(runner.masker)
    try:
        results = await asyncio.gather(*(runner.run(kind, entry, args.debug) for kind, entry in selected))
    finally:
        for kind in registry.kinds():  # sessions a kind keeps between runs (heartbeats' IDLE)
            if kind.close is not None:
                await kind.close(runner)
        await asyncio.to_thread(ledger.close)
    entries = {e.name: e for _, e in selected}
    text, code = report(results, warn_days=args.warn_days, crit_days=args.crit_days, entries=entries)
    print(text, file=out)
    return code


def _days_left(facts: TLSFacts, now: float) -> float | None:
    return None if facts.earliest_not_after is None else (facts.earliest_not_after - now) / 86400


def report(
    results: Sequence[RunResult],
    warn_days: float | None = None,
    crit_days: float | None = None,
    entries: Mapping[str, object] | None = None,
) -> tuple[str, int]:
    """Nagios-style first line (status - summary | perfdata), then a readable section per probe, each
    kind adding its own lines. ``entries`` (the run's config entries by probe name) lets a fact that was
    not configured say so; without it, each result goes to the kind that claims it."""
    now = time.time()
    given = entries or {}
    kind_of = {r.probe: registry.kind_of_result(r, given) for r in results}
    problems: list[tuple[int, str]] = []
    for r in results:
        if not r.success:
            problems.append(
                (EXIT_UNKNOWN if r.reason == "internal" else EXIT_CRITICAL, f"{r.probe}: {r.reason}")
            )
        junk = junk_warning(r)  # delivered, but as spam: the daemon's alert is a warning too
        if junk is not None:
            problems.append((EXIT_WARNING, junk))
        for endpoint, facts in r.tls.items():
            days = _days_left(facts, now)
            if days is None:
                continue
            if crit_days is not None and days < crit_days:
                problems.append(
                    (EXIT_CRITICAL, f"{r.probe} {endpoint}: certificate expires in {days:.1f} days")
                )
            elif warn_days is not None and days < warn_days:
                problems.append(
                    (EXIT_WARNING, f"{r.probe} {endpoint}: certificate expires in {days:.1f} days")
                )
    code = max((c for c, _ in problems), default=EXIT_OK)
    if EXIT_UNKNOWN in (c for c, _ in problems):
        code = EXIT_UNKNOWN
    status = {EXIT_OK: "OK", EXIT_WARNING: "WARNING", EXIT_CRITICAL: "CRITICAL", EXIT_UNKNOWN: "UNKNOWN"}[
        code
    ]
    if problems:
        summary = "; ".join(text for _, text in problems)
    else:
        parts = []
        for each in registry.kinds():
            n = sum(1 for r in results if kind_of[r.probe] is each)
            if n:
                parts.append(f"{n} {each.done}")
        summary = ", ".join(parts)
    perf = [f"'{r.probe}_delivery'={r.delivery:.3f}s;;;0" for r in results if r.delivery is not None]
    perf += [f"'{r.probe}_sync'={r.sync_seconds:.3f}s;;;0" for r in results if r.sync_seconds is not None]
    for r in results:
        kind = kind_of[r.probe]
        if kind is not None and kind.perfdata is not None:
            perf += kind.perfdata(r, given.get(r.probe))
    for r in results:
        for endpoint, facts in r.tls.items():
            days = _days_left(facts, now)
            if days is not None:
                perf.append(f"'{r.probe}_{endpoint}_days'={days:.1f};{warn_days or ''};{crit_days or ''}")
    lines = [f"MAILCANARY {status} - {summary}" + (f" | {' '.join(perf)}" if perf else "")]
    for r in results:
        kind = kind_of[r.probe]
        lines.append("")
        if r.delivery is not None:
            verdict = f"delivered in {r.delivery:.3f}s"
        else:
            verdict = "OK" if r.success else f"FAILED {r.reason}"
        lines.append(f"{r.probe}: {verdict} (run took {r.duration:.3f}s)")
        if not r.success:
            where = f" during {r.failed_phase}" if r.failed_phase else ""
            lines.append(f"  reason: {r.reason}{where}: {r.message}")
        if kind is not None and kind.report_facts is not None:
            lines.extend(kind.report_facts(r, given.get(r.probe)))
        if r.late or r.swept:
            lines.append(f"  earlier canaries cleaned up: {r.late} late, {r.swept} stale")
        if r.phases:
            width = max(len(p) for p in r.phases)
            lines.append(f"  {'phase'.ljust(width)}  seconds")
            lines.extend(f"  {phase.ljust(width)}  {secs:.4f}" for phase, secs in r.phases.items())
        for endpoint, facts in r.tls.items():
            lines.extend(_tls_report(endpoint, facts, now, r.hygiene.get(endpoint)))
        if kind is not None and kind.report_detail is not None:
            lines.extend(kind.report_detail(r))
        if r.transcript:
            lines.append("  dialogue (secrets masked):")
            lines.extend(f"    {line}" for line in r.transcript)
    return "\n".join(lines), code


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _tls_report(endpoint: str, f: TLSFacts, now: float, hygiene: Hygiene | None = None) -> list[str]:
    from probes.tls import summary  # `mailcanary probe` only

    yes = {True: "yes", False: "no", None: "unknown"}
    lines = [f"  TLS {endpoint} ({f.protocol}, {f.mode}):"]
    if f.leaf is not None:
        leaf = f.leaf
        lines += [
            f"    subject    {leaf.subject}",
            f"    SANs       {', '.join(leaf.sans) or '(none)'}",
            f"    issuer     {leaf.issuer}",
            f"    valid      {_when(leaf.not_before)} .. {_when(leaf.not_after)}",
        ]
    for i, cert in enumerate(f.chain):
        lines.append(f"    chain[{i}]   {cert.subject} (expires {_when(cert.not_after)})")
    days = _days_left(f, now)
    if days is not None:
        lines.append(f"    days left  {days:.1f} (earliest expiry in the chain)")
    lines.append(f"    version    {f.version or 'none'}   cipher {f.cipher or 'none'}")
    lines.append(
        f"    verified   {yes[f.verified]}"
        + (f" ({f.verify_reason})" if f.verify_reason else "")
        + f"   hostname match {yes[f.hostname_match]}"
    )
    if f.handshake_refused is not None:
        lines.append(f"    refused    by a client with today's defaults: {f.handshake_refused}")
    legacy = ", ".join(f"{v} {yes[a]}" for v, a in f.legacy.items())
    lines.append(f"    legacy TLS accepted: {legacy}")
    if f.mode == "starttls":
        lines.append(
            f"    STARTTLS offered {yes[f.starttls_offered]}   AUTH before TLS {yes[f.auth_before_tls]}"
        )
    lines.extend(summary.summary(f, now))
    found = summary.findings(f)
    if found:
        lines.append(f"    findings   {'; '.join(found)}")
    good = f.verified and f.handshake_ok and not any(f.legacy.values()) and f.handshake_refused is None
    verdict = "GOOD" if good and not f.auth_before_tls and not found else "NEEDS ATTENTION"
    gaps = summary.unchecked(f)
    if verdict == "GOOD" and gaps:  # never GOOD for what was not checked
        verdict = f"GOOD as far as checked; not checked or unknown: {', '.join(gaps)}"
    revoked = revocations({endpoint: f}, {endpoint: hygiene} if hygiene is not None else {})
    if revoked:
        verdict = f"REVOKED ({revoked[0][1]})"
    lines.append(f"    verdict    {verdict}")
    return lines


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
