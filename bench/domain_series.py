"""Series and render cost of one domain check at its bound, against a round trip's, in one run.

    python -m bench.domain_series [--repeat 200]

A domain check at the configured maximum (64 MX addresses, 16 DNSBL zones, the must-refuse checks, DANE,
OCSP, every TLS fact) is recorded in a ResultStore; the pre-rendered /metrics cache renders its fragment
once per recorded run (what a finished run costs). The anchor is a round trip with full results (every
phase, the histogram, TLS facts of two endpoints), rendered by the same cache in the same run. Prints
series per probe, the median render time per probe and per series, and the ratios.
"""

from __future__ import annotations

import argparse
import time

from bench._common import load, median, table


def _domain_report():  # type: ignore[no-untyped-def]
    from probes.domain import dane, dnsbl, mtasts, mustrefuse
    from probes.domain.mx import AddressReport, MXHost, MXResolution
    from probes.domain.probe import DomainReport, MXAddressResult
    from probes.tls.hygiene import KeyFacts, OCSPResult
    from tests.support.tlsfacts import facts

    hosts = tuple(
        MXHost(f"mx{h}.example.com", 10 * h, tuple(f"192.0.2.{h * 8 + a}" for a in range(8)), "secure")
        for h in range(8)
    )
    res = MXResolution("example.com", hosts, implicit=False, null_mx=False, dnssec="secure")
    key = KeyFacts("ec", 256, "sha256", False, False, 90.0, 2, "http://ocsp.example/", None)
    addresses = []
    for host in hosts:
        for address in host.addresses:
            tls = facts(f"{address}:25", "smtp")
            rep = AddressReport(
                host.name,
                address,
                tls=tls,
                phases={"queue": 0.0, "tls_connect": 0.01, "tls_handshake": 0.02, "tls_legacy": 0.03},
                plain_mail_from_code=530,
            )
            addresses.append(
                MXAddressResult(
                    rep,
                    dane=dane.DANEResult(True, "secure", 2, True, (), True),
                    leaf=key,
                    ocsp=OCSPResult("good", 1.0, 2.0),
                    listings=[dnsbl.Listing(f"zone{z}.example", address, "not_listed") for z in range(16)],
                    refusals=[
                        mustrefuse.RefusalResult(c, True, 554, "RCPT", True)
                        for c in ("open_relay", "auth_before_tls", "own_domain_sender")
                    ],
                )
            )
    policy = mtasts.Policy(True, "enforce", 604800, ("*.example.com",))
    return DomainReport(
        "example.com",
        res,
        addresses,
        mtasts.STSRecord(True, "1"),
        mtasts.PolicyFetch(200, "text/plain", 100, None, policy),
        mtasts.TLSRPTRecord(True, ("mailto:tls@example.com",)),
    )


def _count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    from bench.metrics_scrape import _results
    from exporter.metrics.collector import ExporterState, SeriesCache
    from exporter.run.results import ResultStore, RunResult

    report = _domain_report()
    domain_run = RunResult("dom", False, "domain_findings", "x", 1.7e9, 3.0, {}, detail=report)
    trip_runs = [_results("rt", 0)]
    figures: dict[str, tuple[int, float]] = {}
    for name, kind, runs in (("dom", "domain", [domain_run]), ("rt", "roundtrip", trip_runs)):
        store = ResultStore()
        cache = SeriesCache(store, ExporterState(probes={name: kind}))
        store.ensure([name])
        for run in runs:
            store.record(run)
        series = _count(cache.text()) - _count(SeriesCache(ResultStore(), ExporterState()).text())
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            store.record(runs[-1])  # one finished run: its probe's fragment is rendered again
            times.append(time.perf_counter() - t)
        figures[kind] = (series, median(times))
    (ds, dt), (rs, rt) = figures["domain"], figures["roundtrip"]
    rows = [
        ("series per probe", f"{ds}", f"{rs}", f"{ds / rs:.1f}x", "bounded by max_mx x max_addresses"),
        (
            "render per finished run",
            f"{dt * 1e3:.2f} ms",
            f"{rt * 1e3:.2f} ms",
            f"{dt / rt:.1f}x",
            "off the scrape path",
        ),
        (
            "render per series",
            f"{dt / ds * 1e6:.1f} µs",
            f"{rt / rs * 1e6:.1f} µs",
            f"{(dt / ds) / (rt / rs):.2f}x",
            "≈ 1x",
        ),
    ]
    print(f"domain check at its bound (64 addresses x 16 zones) vs a round trip; {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
