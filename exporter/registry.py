"""The registry of probe kinds: the only list of them (blackbox_exporter's map of probers).

A kind is one module in ``exporter/kinds/`` that declares itself once, as a :class:`Kind`: its config
section and entry model, how settings are built from an entry, its probe function (one signature for every
kind: ``async probe(settings, ctx: ProbeContext) -> detail``), its deadline, outcomes, metric families,
TLS endpoints and status-page cell. The daemon, scheduler, runner, ``mailcanary probe``, ``/probe``, the
collector and its pre-rendered cache, the status page, the config loader and the JSON Schema loop over
:func:`kinds`; none of them names a kind.

Why a module of its own, apart from ``exporter/kinds/``: the config's root model and the runner read the
registry, and the kind modules import both (entry models, results); a leaf module that imports nothing of
the project at run time keeps that free of circles. ``exporter/__init__.py`` imports ``exporter.kinds``, so
the built-in kinds are registered whatever module of the daemon is imported first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from exporter.config.loader import LoadedConfig
    from exporter.config.model import Config
    from exporter.run.results import ProbeStats, RunResult
    from exporter.state.ledger import Ledger
    from probes.context import ProbeContext
    from probes.domain.dnsbl import Listing, ListingCache
    from probes.recorder import Masker, Recorder
    from probes.tls.hygiene import CRLCache, OCSPCache
    from probes.tls.legacy import LegacyCache
    from probes.tls.scanning import ScanCache
    from probes.wire.net import Endpoint
    from probes.wire.slots import ServerSlots

E = TypeVar("E")  # the entry model (a pydantic model with at least `name` and `interval`)
S = TypeVar("S")  # the probe library's settings
D = TypeVar("D")  # what the probe returns (its detail)

Families = Callable[["dict[str, ProbeStats]", list[str]], "list[Metric]"]


class RunEnv(Protocol):
    """What a kind's settings builder and run hooks may use of the runner (exporter.run.runner.Runner)."""

    loaded: LoadedConfig
    key: bytes
    ledger: Ledger
    masker: Masker
    slots: ServerSlots
    legacy: LegacyCache
    scans: ScanCache
    ocsp: OCSPCache
    crl: CRLCache
    dnsbl: ListingCache
    delay_warned: dict[str, float]


@dataclass(frozen=True)
class Verdict:
    """A run's outcome as its kind judges it, with the common fields a kind may fill."""

    reason: str
    message: str
    delivery: float | None = None
    placement: str | None = None
    detail: object = None  # the kind's own result, kept in RunResult.detail


@dataclass
class Settled:
    """What a kind's hooks add after the attempt (the round trip: its ledger and the sender's DNSBL)."""

    late: int = 0
    swept: int = 0
    lost: int = 0
    outstanding: int = 0
    sender_dnsbl: tuple[Listing, ...] = ()
    spent: float = 0.0  # seconds spent after the probe that the run's duration leaves out


class RunHooks(Protocol):
    """Per-run work of a kind around its probe, for what must happen even when the probe times out."""

    async def begin(self) -> None:
        """Before the probe (outside its deadline)."""

    async def after(self, reason: str) -> Settled:
        """After the attempt, whatever its outcome (not under the deadline)."""

    async def cancelled(self) -> None:
        """The daemon is stopping mid-run: leave state right."""

    def finished(self, run: RunResult) -> None:
        """The run is recorded (warnings that look at the result)."""


class TargetProbe(Protocol):
    """``/probe?module=…&target=…`` (blackbox_exporter style): one run against a target the scraper names,
    with a /probe module (``modules`` in the config) instead of an entry, rendered as a fresh registry."""

    @property
    def steps(self) -> int:
        """The run's deadline is the module's timeout times this."""

    def settings(self, module: Any, host: str, port: int | None, slots: ServerSlots | None) -> Any:
        """The probe library's settings for the module and target."""

    def recover(self, rec: Recorder, settings: Any) -> Any:
        """What the recorder learnt before a failure, as the probe's value (or None)."""

    def outcome(self, value: Any) -> str:
        """``success`` or the failure reason the value shows."""

    def error(self, value: Any) -> str | None:
        """The value's own error text, if any (for ?debug=true)."""

    def metrics(self, value: Any, success: bool, duration: float) -> list[Metric]:
        """The families of the answer."""


def _keep(value: object, reason: str, message: str) -> Verdict:
    return Verdict(reason, message)


def _no_endpoints(entry: Any) -> set[str]:
    return set()


def _entry_spec(cfg: Any, entry: Any) -> object:
    return entry


def delivery_cell(run: RunResult) -> str:
    """A run's delivery latency, or ``-``: the status page's result cell unless a kind says otherwise."""
    return f"{run.delivery:.3f} s" if run.delivery is not None else "-"


def _claims_none(run: RunResult) -> bool:
    return False


def _no_sessions(entry: Any) -> list[tuple[Endpoint, str, int | None]]:
    return []


@dataclass(frozen=True)
class Kind(Generic[E, S, D]):
    """One probe kind, declared once in its module (see docs/architecture.md, "Adding a probe kind")."""

    name: str  # the `kind` label of mailcanary_config_probes and the status page
    section: str  # the config key that lists its entries
    model: type[E]  # the entry model (exporter.config.Model: unknown keys refused)
    settings: Callable[[E, RunEnv], S]  # config entry -> the probe library's settings
    probe: Callable[[S, ProbeContext], Awaitable[D]]  # the one probe signature
    deadline: Callable[[E, Config], float]  # seconds the whole run may take
    outcomes: tuple[str, ...]  # every `outcome` label value of its runs counter, success first
    families: Families  # its metric families for (snapshot, probe names)
    noun: str  # one entry, as `mailcanary probe` names it ("TLS check")
    plural: str  # entries, as check-config counts them ("TLS checks")
    judge: Callable[[D | None, str, str], Verdict] = _keep  # (value, reason, message) -> outcome
    endpoints: Callable[[E], set[str]] = _no_endpoints  # TLS endpoints whose facts the entry reports
    spec: Callable[[Config, E], object] = _entry_spec  # what a reload compares (a change reschedules)
    status: Callable[[RunResult], str] = delivery_cell  # its cell in the status page's result column
    # Certificate hygiene (OCSP, CRL) of the chains the run saw; with "tls_revoked" among its outcomes, a
    # revoked certificate fails a run that got as far as the certificate (exporter.run.runner.revoked_verdict)
    hygiene: bool = False
    hooks: Callable[[E, RunEnv, ProbeContext], RunHooks] | None = None  # per-run work around the probe
    ledger: bool = False  # its runs keep canaries in the ledger (a reload prunes the others' entries)
    sessions: Callable[[E], list[tuple[Endpoint, str, int | None]]] = _no_sessions  # (ep, service, max)
    check: Callable[[Config, E, str], None] | None = None  # cross-field check (raises ValueError)
    load: Callable[[LoadedConfig, E, str, dict[str, str]], list[str]] | None = None  # secrets -> problems
    notes: Callable[[Config, E, str], list[str]] | None = None  # what check-config says about an entry
    secret_sides: tuple[str, ...] = ()  # keys of an entry holding password/_file/_env (raw checks)
    count_zero: bool = False  # check-config names it even with no entries
    # `mailcanary probe`'s report: the summary of a passing run ("TLS checks verified"), which results
    # are this kind's when no config is given, fact lines (before the phases), detail lines (after the
    # TLS facts) and Nagios perfdata beyond delivery, sync and certificate days.
    done: str = "passed"
    claims: Callable[[RunResult], bool] = _claims_none
    report_facts: Callable[[RunResult, E | None], list[str]] | None = None
    report_detail: Callable[[RunResult], list[str]] | None = None
    perfdata: Callable[[RunResult, E | None], list[str]] | None = None
    target: TargetProbe | None = None  # how /probe runs it against a target its caller names
    close: Callable[[RunEnv], Awaitable[None]] | None = None  # the daemon stops: release what runs kept

    def entries(self, cfg: Config) -> Sequence[E]:
        entries: Sequence[E] = getattr(cfg, self.section)
        return entries


AnyKind = Kind[Any, Any, Any]
_KINDS: dict[str, AnyKind] = {}
_version = 0  # bumped on every change: the config's root model is rebuilt when it moves


def register(kind: AnyKind) -> AnyKind:
    """Add ``kind`` (a kind module does this once; a test may add one at run time)."""
    global _version
    for other in _KINDS.values():
        if other.name != kind.name and other.section == kind.section:
            raise ValueError(f"config section {kind.section!r} is taken by kind {other.name!r}")
    _KINDS[kind.name] = kind
    _version += 1
    return kind


def unregister(name: str) -> None:
    global _version
    if _KINDS.pop(name, None) is not None:
        _version += 1


def version() -> int:
    return _version


def kinds() -> tuple[AnyKind, ...]:
    """Every kind, in registration order (the order of sections, families and /metrics)."""
    return tuple(_KINDS.values())


def get(name: str) -> AnyKind:
    return _KINDS[name]


def names() -> tuple[str, ...]:
    return tuple(_KINDS)


def primary() -> str:
    """The first kind: counted on /metrics even with no entries, and the kind of a probe the state does
    not name (results recorded without a daemon)."""
    return next(iter(_KINDS))


def target_kind() -> AnyKind | None:
    """The kind ``/probe`` runs (the first that declares a target probe)."""
    return next((k for k in _KINDS.values() if k.target is not None), None)


def kind_of_entry(entry: object) -> AnyKind:
    """The kind whose model ``entry`` is."""
    for kind in _KINDS.values():
        if type(entry) is kind.model:
            return kind
    raise LookupError(f"no probe kind for {type(entry).__name__}")


def kind_of_result(run: RunResult, entries: Mapping[str, Any]) -> AnyKind | None:
    """The kind of a finished run: its entry's, else the first kind that claims it (no config given)."""
    entry = entries.get(run.probe)
    if entry is not None:
        return kind_of_entry(entry)
    return next((k for k in _KINDS.values() if k.claims(run)), None)


def configured(cfg: Config) -> list[tuple[AnyKind, Any]]:
    """Every entry of every kind, in registry order (names are unique across kinds)."""
    return [(kind, entry) for kind in _KINDS.values() for entry in kind.entries(cfg)]


def find(cfg: Config, name: str) -> tuple[AnyKind, Any] | None:
    for kind, entry in configured(cfg):
        if entry.name == name:
            return kind, entry
    return None


def nouns(words: Collection[str]) -> str:
    """``a, b or c``."""
    items = list(words)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"
