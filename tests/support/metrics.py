"""Scraping a running exporter's ``/metrics`` over HTTP, and picking one sample out of the scrape."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Scrape = dict[str, list[tuple[str, dict[str, str], float]]]


def scrape(port: int) -> Scrape:
    """Every family of ``http://127.0.0.1:PORT/metrics`` as (sample name, labels, value) triples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Scrape = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = [(s.name, s.labels, s.value) for s in fam.samples]
    return out


def value(metrics: Scrape, sample: str, **labels: str) -> float:
    """The value of the first ``sample`` whose labels include ``labels``; KeyError if there is none."""
    for fam in metrics.values():
        for name, lab, val in fam:
            if name == sample and all(lab.get(k) == v for k, v in labels.items()):
                return val
    raise KeyError(f"{sample}{labels} not exported")
