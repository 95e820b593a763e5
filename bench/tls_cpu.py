"""CPU per TLS check: mailcanary's /probe against Debian's prometheus-blackbox-exporter, interleaved.

    python -m bench.tls_cpu [--checks 200] [--variants default,retest,nolegacy]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root), then both exporters as daemons
on loopback ports: ``mailcanary run`` (no scheduled probes, /probe modules only) and
``prometheus-blackbox-exporter`` (``apt-get install prometheus-blackbox-exporter``) with the equivalent
``tcp`` modules. The same endpoints: SMTP submission with STARTTLS (EHLO, STARTTLS, the verified
handshake, QUIT) and IMAPS (handshake, greeting, LOGOUT), verifying against the test CA. mailcanary's
module comes in three variants, each measured in its own block against blackbox in the same block:

- ``default``: the module's defaults (``check_legacy: true``, ``legacy_recheck: 1d``): the legacy TLS
  1.0/1.1 answers are tested once (in the warm-up request) and remembered per target, as a target scraped
  every minute sees it all day; the certificate audit and the verified handshake are done every request.
- ``retest``: ``legacy_recheck: 0``: the two legacy handshakes on every request (what every /probe with
  the default module did before issue 23).
- ``nolegacy``: ``check_legacy: false``: no legacy handshakes at all (blackbox has none).

Every request carries Prometheus' Accept header (``--accept none``: none), as a real scrape does.
Requests alternate mailcanary / blackbox, ``--checks`` of each per endpoint and variant; each exporter's
CPU is read from /proc (user + system, all threads) before and after the block, so the client's own cost
is not counted. Prints mailcanary's figure, blackbox's, the ratio and the goal (≤ 1.2x blackbox with the
default module, issue 23), with the load average.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from bench._common import (
    PROMETHEUS_ACCEPT,
    cpu_seconds,
    free_port,
    load,
    mailcanary_argv,
    start_logged,
    stop,
    table,
    wait_http,
)
from tests.mailstack import MailStack, make_root

ACCEPT = {"prometheus": PROMETHEUS_ACCEPT, "none": ""}
BLACKBOX = shutil.which("prometheus-blackbox-exporter") or "/usr/bin/prometheus-blackbox-exporter"


def get(url: str, accept: str) -> bytes:
    """One /probe, with the Accept header a scraper sends (Prometheus' by default: OpenMetrics first)."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return bytes(resp.read())


def blackbox_config(ca: str, server_name: str) -> dict[str, object]:
    tls = {"ca_file": ca, "server_name": server_name}
    return {
        "modules": {
            "smtp_starttls": {
                "prober": "tcp",
                "timeout": "10s",
                "tcp": {
                    "query_response": [
                        {"expect": "^220 "},
                        {"send": "EHLO bench.example.test\r"},
                        {"expect": "^250 "},
                        {"send": "STARTTLS\r"},
                        {"expect": "^220 "},
                        {"starttls": True},
                        {"send": "EHLO bench.example.test\r"},
                        {"expect": "^250 "},
                        {"send": "QUIT\r"},
                    ],
                    "tls_config": tls,
                },
            },
            "imaps": {
                "prober": "tcp",
                "timeout": "10s",
                "tcp": {
                    "tls": True,
                    "tls_config": tls,
                    "query_response": [{"expect": "^\\* OK"}, {"send": "a1 LOGOUT\r"}, {"expect": "^a1 OK"}],
                },
            },
        }
    }


VARIANTS: dict[str, tuple[str, dict[str, object]]] = {  # name -> (what it is, its legacy keys)
    "default": ("default module (legacy remembered)", {}),
    "retest": ("legacy re-tested every request", {"legacy_recheck": "0s"}),
    "nolegacy": ("legacy off", {"check_legacy": False}),
}


def mailcanary_config(tmp: Path, ca: str, server_name: str) -> dict[str, object]:
    tls = {"ca_file": ca, "server_name": server_name}
    modules: dict[str, object] = {}
    for variant, (_, keys) in VARIANTS.items():
        modules[f"smtp_{variant}"] = {"protocol": "smtp", "tls": "starttls", "tls_config": tls, **keys}
        modules[f"imaps_{variant}"] = {"protocol": "imap", "tls": "implicit", "tls_config": tls, **keys}
    return {"global": {"state_dir": str(tmp / "state")}, "modules": modules}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--checks", type=int, default=200, help="checks per exporter, endpoint and variant")
    parser.add_argument(
        "--accept", choices=sorted(ACCEPT), default="prometheus", help="Accept header of every /probe request"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="mailcanary module variants to measure"
    )
    args = parser.parse_args()
    accept = ACCEPT[args.accept]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (have: {', '.join(VARIANTS)})")
    rows = []
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ca, name = str(stack.ca_file), stack.server_name
        (tmp / "blackbox.yml").write_text(yaml.safe_dump(blackbox_config(ca, name)))
        (tmp / "mailcanary.yml").write_text(yaml.safe_dump(mailcanary_config(tmp, ca, name)))
        mc_port, bb_port = free_port(), free_port()
        mc = start_logged(mailcanary_argv(tmp / "mailcanary.yml", mc_port), tmp / "mailcanary.log")
        bb = start_logged(
            [BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address=127.0.0.1:{bb_port}"],
            tmp / "blackbox.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{mc_port}/-/healthy")
            wait_http(f"http://127.0.0.1:{bb_port}/-/healthy")
            endpoints = [
                ("SMTP STARTTLS", "smtp", "smtp_starttls", stack.ports["submission"]),
                ("IMAPS", "imaps", "imaps", stack.ports["imaps"]),
            ]
            for label, mc_prefix, bb_module, port in endpoints:
                for variant in variants:
                    mc_module = f"{mc_prefix}_{variant}"
                    target = f"{stack.host}:{port}"
                    mc_url = f"http://127.0.0.1:{mc_port}/probe?module={mc_module}&target={target}"
                    bb_url = f"http://127.0.0.1:{bb_port}/probe?module={bb_module}&target={target}"
                    for url in (mc_url, bb_url):  # warm-up, and a check that both succeed
                        body = get(url, accept).decode()
                        if "probe_success 1" not in body:
                            print(f"probe failed: {url}\n{body}", file=sys.stderr)
                            return 1
                    failed = {"mailcanary": 0, "blackbox": 0}
                    mc0, bb0 = cpu_seconds(mc.pid), cpu_seconds(bb.pid)
                    for _ in range(args.checks):
                        if "probe_success 1" not in get(mc_url, accept).decode():
                            failed["mailcanary"] += 1
                        if "probe_success 1" not in get(bb_url, accept).decode():
                            failed["blackbox"] += 1
                    ours = (cpu_seconds(mc.pid) - mc0) / args.checks * 1000
                    theirs = (cpu_seconds(bb.pid) - bb0) / args.checks * 1000
                    rows.append(
                        (
                            f"CPU per TLS check, {label}, {VARIANTS[variant][0]} "
                            f"(N={args.checks} each, failed {failed}, {load()})",
                            f"{ours:.2f} ms",
                            f"{theirs:.2f} ms",
                            f"{ours / theirs:.2f}x blackbox" if theirs else "n/a",
                            "≤ 1.2x blackbox" if variant == "default" else "(reference)",
                        )
                    )
                    print(rows[-1], flush=True)
        finally:
            stop(mc)
            stop(bb)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}, Accept: {args.accept}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
