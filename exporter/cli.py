"""The ``mailcanary`` command: run (daemon), probe (one-shot, Nagios exit codes), check-config."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from . import __version__, logs
from .config import DEFAULT_CONFIG_PATH, ConfigError, LoadedConfig, load_config, state_dir
from .daemon import Daemon
from .metrics import ExporterState
from .results import ResultStore, RunResult
from .runner import Runner, make_masker
from .state import Ledger, load_or_create_key

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_UNKNOWN = 0, 1, 2, 3  # Nagios plugin convention
EXIT_USAGE = 3


def _default_config() -> str:
    return os.environ.get("MAILCANARY_CONFIG", DEFAULT_CONFIG_PATH)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailcanary",
        description="Mail-delivery monitor: canary round trips and TLS audits, exported to Prometheus.",
    )
    parser.add_argument("--version", action="version", version=f"mailcanary {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            "-c",
            default=None,
            metavar="FILE",
            help=f"configuration file (default: $MAILCANARY_CONFIG or {DEFAULT_CONFIG_PATH})",
        )
        p.add_argument(
            "--log-format",
            choices=["auto", "json", "console"],
            default="auto",
            help="log format (default: console on a TTY, JSON otherwise)",
        )
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    run = sub.add_parser("run", help="run the exporter daemon")
    common(run)
    run.add_argument(
        "--listen",
        default=":9925",
        metavar="[HOST]:PORT",
        help="HTTP listen address for /metrics (default :9925, all interfaces)",
    )
    probe = sub.add_parser("probe", help="run probes once, print a report, exit 0 OK / 2 failed / 3 error")
    common(probe)
    probe.set_defaults(log_level="warning")  # the report says it all; logs only for trouble
    probe.add_argument("names", nargs="*", metavar="NAME", help="probes to run (default: all)")
    probe.add_argument("--debug", action="store_true", help="print the protocol dialogue (secrets masked)")
    check = sub.add_parser("check-config", help="validate a configuration file")
    common(check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    logs.configure(args.log_format, args.log_level)
    try:
        if args.command == "run":
            return _run(args)
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
        from .http import parse_listen

        parse_listen(args.listen)
    except ValueError as exc:
        print(f"mailcanary: {exc}", file=sys.stderr)
        return EXIT_USAGE
    daemon = Daemon(path, args.listen)
    try:
        asyncio.run(daemon.run_forever())
    except OSError as exc:  # e.g. the listen port is taken
        print(f"mailcanary: cannot listen on {args.listen}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    return EXIT_OK


def _check(args: argparse.Namespace, out: TextIO) -> int:
    path = _config_path(args)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=out)
        return 1
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=out)
    print(f"{path}: ok ({len(loaded.config.roundtrip)} round-trip probes)", file=out)
    return EXIT_OK


async def _probe(args: argparse.Namespace, out: TextIO) -> int:
    loaded = load_config(_config_path(args))
    cfg = loaded.config
    known = {p.name: p for p in cfg.roundtrip}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise ConfigError(
            [
                f"{loaded.path}: roundtrip: no probe named {n!r} (have: {', '.join(known) or 'none'})"
                for n in unknown
            ]
        )
    selected = [known[n] for n in args.names] if args.names else list(known.values())
    if not selected:
        raise ConfigError([f"{loaded.path}: roundtrip: no probes configured"])
    state = state_dir(cfg)
    key = load_or_create_key(cfg.global_.canary_key_file, state, loaded.path)
    runner = Runner(
        loaded=loaded,
        key=key,
        ledger=Ledger(state / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )
    logs.set_masker(runner.masker)
    results = await asyncio.gather(*(runner.run_roundtrip(p, debug=args.debug) for p in selected))
    print(report(results, loaded, ExporterState()), file=out)
    if any(r.reason == "internal" for r in results):
        return EXIT_UNKNOWN
    return EXIT_OK if all(r.success for r in results) else EXIT_CRITICAL


def report(results: Sequence[RunResult], loaded: LoadedConfig, _: ExporterState) -> str:
    """Nagios-style first line (status, summary | perfdata), then a readable table per probe."""
    failed = [r for r in results if not r.success]
    status = (
        "OK" if not failed else ("UNKNOWN" if any(r.reason == "internal" for r in failed) else "CRITICAL")
    )
    if failed:
        summary = "; ".join(f"{r.probe}: {r.reason}" for r in failed)
    else:
        summary = f"{len(results)}/{len(results)} round trips delivered"
    perf = " ".join(f"'{r.probe}_delivery'={r.delivery:.3f}s;;;0" for r in results if r.delivery is not None)
    lines = [f"MAILCANARY {status} - {summary}" + (f" | {perf}" if perf else "")]
    for r in results:
        lines.append("")
        verdict = f"delivered in {r.delivery:.3f}s" if r.delivery is not None else f"FAILED {r.reason}"
        lines.append(f"{r.probe}: {verdict} (run took {r.duration:.3f}s)")
        if not r.success:
            where = f" during {r.failed_phase}" if r.failed_phase else ""
            lines.append(f"  reason: {r.reason}{where}: {r.message}")
        if r.late or r.swept:
            lines.append(f"  earlier canaries cleaned up: {r.late} late, {r.swept} stale")
        if r.phases:
            width = max(len(p) for p in r.phases)
            lines.append(f"  {'phase'.ljust(width)}  seconds")
            for phase, secs in r.phases.items():
                lines.append(f"  {phase.ljust(width)}  {secs:.4f}")
        if r.transcript:
            lines.append("  dialogue (secrets masked):")
            lines.extend(f"    {line}" for line in r.transcript)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
