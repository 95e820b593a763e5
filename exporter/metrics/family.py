"""Metric families declared as data: a :class:`FamilySpec` per family, one :func:`render` for all kinds.

A uniform family is a name, a type, a help text, the labels it adds to the row's own (``probe``, or
``probe, domain, mx, address``...), and a function from one row's object (a probe's stats, a domain
report, an address, TLS facts) to its samples. :func:`render` makes every family of a list, in list order,
with each row's samples in row order: the same families and bytes the hand-written loops made. Families
that are not uniform (a histogram, series built from several objects) are :class:`HistogramSpec` or stay
functions beside the lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

T = TypeVar("T")
Sample = tuple[tuple[str, ...], float]  # the values of the spec's own labels, and the sample's value
Samples = Iterable[Sample]
NONE: tuple[Sample, ...] = ()


@dataclass(frozen=True)
class FamilySpec(Generic[T]):
    """A gauge or counter: ``samples(obj)`` gives each sample's own label values and value."""

    name: str
    type: Literal["gauge", "counter"]
    help: str
    samples: Callable[[T], Samples]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class HistogramSpec(Generic[T]):
    """A histogram without labels of its own: ``buckets(obj)`` gives (cumulative buckets, sum)."""

    name: str
    help: str
    buckets: Callable[[T], tuple[list[tuple[str, float]], float]]


def gauge(name: str, help: str, samples: Callable[[T], Samples], *labels: str) -> FamilySpec[T]:
    return FamilySpec(name, "gauge", help, samples, labels)


def counter(name: str, help: str, samples: Callable[[T], Samples], *labels: str) -> FamilySpec[T]:
    return FamilySpec(name, "counter", help, samples, labels)


Spec = FamilySpec[T] | HistogramSpec[T]


def render(
    specs: Sequence[Spec[T]], rows: Iterable[tuple[Sequence[str], T]], labels: Sequence[str]
) -> list[Metric]:
    """One family per spec, in order; ``rows`` are (values of ``labels``, the object the specs read)."""
    rows = [(list(values), obj) for values, obj in rows]
    families: list[Metric] = []
    for spec in specs:
        if isinstance(spec, HistogramSpec):
            hist = HistogramMetricFamily(spec.name, spec.help, labels=list(labels))
            for values, obj in rows:
                buckets, total = spec.buckets(obj)
                hist.add_metric(values, buckets, sum_value=total)
            families.append(hist)
            continue
        cls = GaugeMetricFamily if spec.type == "gauge" else CounterMetricFamily
        fam = cls(spec.name, spec.help, labels=[*labels, *spec.labels])
        add, samples = fam.add_metric, spec.samples
        for values, obj in rows:
            for extra, v in samples(obj):
                add([*values, *extra] if extra else values, v)
        families.append(fam)
    return families


# Sample helpers: the shapes most families have.


def value(v: float | None) -> Samples:
    """One sample of ``v``; none when unknown."""
    return NONE if v is None else (((), v),)


def flag(v: bool | None) -> Samples:
    """1 or 0; none when unknown."""
    return NONE if v is None else (((), 1 if v else 0),)


def info(label: str | None) -> Samples:
    """An ``*_info`` sample: 1 with the label; none when there is no (or an empty) label."""
    return (((label,), 1),) if label else NONE


def one_of(current: str | None, choices: Iterable[str]) -> Samples:
    """1 for the current choice, 0 for every other one of a fixed set; none when there is no current."""
    if current is None:
        return NONE
    return [((c,), 1 if c == current else 0) for c in choices]


def counts(seen: dict[str, int], keys: Iterable[str]) -> Samples:
    """A count for every key of a fixed set, 0 for those not seen (so rate() sees the first one)."""
    return [((k,), seen.get(k, 0)) for k in keys]


def each(items: Iterable[tuple[str, float]]) -> Iterator[Sample]:
    """One sample per (label value, value)."""
    return (((k,), v) for k, v in items)
