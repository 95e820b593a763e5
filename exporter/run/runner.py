"""The one place where probe runs get a deadline and exceptions become outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import InitVar, dataclass, field
from typing import Generic, TypeVar

import structlog

from exporter.config import (
    DomainCheckConfig,
    EndpointConfig,
    LoadedConfig,
    ModuleConfig,
    ReceiveConfig,
    RoundTripConfig,
    TLSCheckConfig,
    TLSConfig,
    default_port,
)
from exporter.run.history import BoundedTranscript, History
from exporter.run.results import ResultStore, RunResult
from exporter.state.ledger import Ledger
from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSettings
from probes.clients.pop3 import LoginGate
from probes.clients.smtp import SMTPSettings
from probes.domain.dnsbl import Listing, ListingCache
from probes.domain.mx import MXCheckSettings
from probes.domain.probe import DomainReport, DomainSettings, probe_domain
from probes.errors import ProbeError
from probes.receipt.quota import Usage
from probes.recorder import Masker, Recorder
from probes.roundtrip.probe import (
    PollSchedule,
    POP3Settings,
    RoundTripSettings,
    SyncSettings,
    probe_roundtrip,
)
from probes.tls.audit import TLSCheckSettings, TLSFacts, probe_tls
from probes.tls.hygiene import CRLCache, Hygiene, OCSPCache, chain_hygiene
from probes.tls.legacy import LegacyCache
from probes.wire.dns import DNSSettings
from probes.wire.framing import ReadLimits
from probes.wire.net import Endpoint, TLSSettings
from probes.wire.slots import ServerSlots, deadline_extender

log = structlog.get_logger("mailcanary.runner")
T = TypeVar("T")


@dataclass(frozen=True)
class Attempt(Generic[T]):
    value: T | None
    reason: str
    message: str


# Probe facts about what the receiver did that go into the run's log line (RunResult.receiver).
RECEIVER_FACTS = (
    "junk_folder",
    "junk_folder_found",
    "sync_skipped",
    "other_folders",
    "found_folder",
    "bounces",
    "bounce_watch",
    "sender_ip",  # kept for a blocklist check of the IP the receiver saw
    "sender_dnsbl",  # zone -> status of that IP (receive.sender_dnsbl)
    "clock_offset",
    "login_delay",  # POP3: the LOGIN-DELAY the server announced (seconds; 0: none)
)
TLS_CHECK_STEPS = 6  # connect, dialogue, verified + unverified handshakes, two legacy handshakes


def _tls_settings(tc: TLSConfig) -> TLSSettings:
    return TLSSettings(
        ca_file=tc.ca_file,
        server_name=tc.server_name,
        insecure_skip_verify=tc.insecure_skip_verify,
        cert_file=tc.cert_file,
        key_file=tc.key_file,
    )


def endpoint_of(ep: EndpointConfig, protocol: str) -> Endpoint:
    return Endpoint(
        host=ep.host,
        port=ep.port or default_port(protocol, ep.tls),
        tls_mode=ep.tls,
        tls=_tls_settings(ep.tls_config),
        source_address=ep.source_address,
    )


def tls_check_settings(
    check: TLSCheckConfig | ModuleConfig,
    host: str,
    port: int | None,
    slots: ServerSlots | None = None,
    legacy: LegacyCache | None = None,
) -> TLSCheckSettings:
    if port is None:
        port = default_port(check.protocol, check.tls)
    endpoint = Endpoint(
        host=host,
        port=port,
        tls_mode=check.tls,
        tls=_tls_settings(check.tls_config),
        source_address=getattr(check, "source_address", None),
    )
    return TLSCheckSettings(
        endpoint=endpoint,
        protocol=check.protocol,
        timeout=check.timeout,
        check_legacy=check.check_legacy,
        helo_name=check.helo,
        slots=slots,
        legacy_cache=legacy,
        legacy_recheck=getattr(check, "legacy_recheck", 0.0),
    )


def tls_outcome(facts: TLSFacts | None) -> str:
    """``success`` only for a verified chain whose name matches; a handshake that works but does not
    verify is ``tls_verify`` (the facts are still exported)."""
    if facts is None or not facts.handshake_ok:
        return "tls_handshake"
    return "success" if facts.verified else "tls_verify"


def _credentials(loaded: LoadedConfig, probe: RoundTripConfig, side: str) -> Credentials:
    ep = probe.smtp if side == "smtp" else probe.receive
    assert ep.username is not None
    source = loaded.token_source(probe, side)
    if source is not None:
        assert ep.oauth is not None
        return Credentials(ep.username, token_source=source, mechanism=ep.oauth.mechanism)
    return Credentials(ep.username, loaded.password(probe.name, side))


def roundtrip_settings(
    loaded: LoadedConfig, probe: RoundTripConfig, key: bytes, slots: ServerSlots | None = None
) -> RoundTripSettings:
    """Translate config into the probe library's settings (the library knows nothing of YAML)."""
    smtp_creds = _credentials(loaded, probe, "smtp") if probe.smtp.username else None
    rc = probe.receive
    assert rc.username is not None
    recv_creds = _credentials(loaded, probe, "receive")
    recv_ep = endpoint_of(rc, rc.protocol)
    limits = ReadLimits(rc.max_line_bytes, rc.max_header_bytes, rc.max_message_bytes)
    receiver: IMAPSettings | POP3Settings
    if rc.protocol == "imap":
        receiver = IMAPSettings(
            endpoint=recv_ep,
            credentials=recv_creds,
            allow_plaintext_auth=rc.allow_plaintext_auth,
            mailbox=rc.mailbox,
            timeout=rc.timeout,
            use_idle=rc.idle,
            limits=limits,
            quota=rc.quota,
        )
    else:
        receiver = POP3Settings(
            endpoint=recv_ep,
            credentials=recv_creds,
            allow_plaintext_auth=rc.allow_plaintext_auth,
            timeout=rc.timeout,
            limits=limits,
            run_timeout=loaded.config.timeout_of(probe),
        )
    return RoundTripSettings(
        name=probe.name,
        smtp=SMTPSettings(
            endpoint=endpoint_of(probe.smtp, "smtp"),
            credentials=smtp_creds,
            allow_plaintext_auth=probe.smtp.allow_plaintext_auth,
            helo_name=probe.smtp.helo,
            timeout=probe.smtp.timeout,
        ),
        receiver=receiver,
        sender=probe.sender,
        recipient=probe.recipient,
        key=key,
        poll=PollSchedule(initial=rc.poll_initial, factor=rc.gap_factor, maximum=rc.max_gap),
        sweep_after=probe.sweep_after,
        junk_folders=tuple(rc.junk_folders) if rc.protocol == "imap" and rc.junk else None,
        other_folders=rc.placement_max_folders if rc.protocol == "imap" and rc.placement_all_folders else 0,
        slots=slots,
        bounces_here=probe.watches_bounces_here,
        trusted_authserv_ids=frozenset(i.casefold() for i in rc.trusted_authserv_ids),
        verdict_preset=rc.verdict_preset,
        spam_headers=rc.spam_headers,
        bounce_receiver=(
            _imap_settings(loaded, probe.name, "bounce_receive", probe.bounce_receive)
            if probe.bounce_receive is not None
            else None
        ),
        sync=(
            SyncSettings(flag=rc.sync.flag, timeout=rc.sync.timeout)
            if rc.protocol == "imap" and rc.sync is not None and rc.sync.enabled
            else None
        ),
    )


def _imap_settings(loaded: LoadedConfig, name: str, side: str, rc: ReceiveConfig) -> IMAPSettings:
    """The bounce mailbox's session (a password login; no quota read: not the canary's mailbox)."""
    assert rc.username is not None  # the config requires it
    return IMAPSettings(
        endpoint=endpoint_of(rc, "imap"),
        credentials=Credentials(rc.username, loaded.password(name, side)),
        allow_plaintext_auth=rc.allow_plaintext_auth,
        mailbox=rc.mailbox,
        timeout=rc.timeout,
        use_idle=rc.idle,
        limits=ReadLimits(rc.max_line_bytes, rc.max_header_bytes, rc.max_message_bytes),
    )


def session_limits(loaded: LoadedConfig) -> dict[str, int]:
    """Per-pool limits from the endpoints that set ``max_sessions`` (the smallest wins for a shared pool)."""
    limits: dict[str, int] = {}
    for ep, service, limit in _sides(loaded):
        if limit is not None:
            for key in ServerSlots.keys(ep, service):
                limits[key] = min(limits.get(key, limit), limit)
    return limits


def session_pools(loaded: LoadedConfig) -> set[str]:
    """Every pool a configured probe uses."""
    return {key for ep, service, _ in _sides(loaded) for key in ServerSlots.keys(ep, service)}


def _sides(loaded: LoadedConfig) -> list[tuple[Endpoint, str, int | None]]:
    """(endpoint, service, max_sessions) of every server a configured probe talks to."""
    sides: list[tuple[Endpoint, str, int | None]] = []
    for probe in loaded.config.roundtrip:
        sides.append((endpoint_of(probe.smtp, "smtp"), "smtp", probe.smtp.max_sessions))
        rc = probe.receive
        sides.append((endpoint_of(rc, rc.protocol), rc.protocol, rc.max_sessions))
        if probe.bounce_receive is not None:
            br = probe.bounce_receive
            sides.append((endpoint_of(br, br.protocol), br.protocol, br.max_sessions))
    for check in loaded.config.tls_checks:
        ep = tls_check_settings(check, check.host, check.port).endpoint
        sides.append((ep, check.protocol, check.max_sessions))
    return sides


def domain_settings(check: DomainCheckConfig, slots: ServerSlots | None = None) -> DomainSettings:
    """A domain_checks entry as the probe library's settings."""
    refuse = check.must_refuse
    return DomainSettings(
        domain=check.domain,
        dns=DNSSettings(nameservers=tuple(check.resolvers), port=check.resolver_port, timeout=check.timeout),
        mx=MXCheckSettings(
            port=check.port,
            timeout=check.timeout,
            check_legacy=check.check_legacy,
            ca_file=check.ca_file,
            helo_name=check.helo,
            source_address=check.source_addresses,
            check_plain_mail_from=refuse.enabled and refuse.mail_from_before_tls,
            slots=slots,
        ),
        max_hosts=check.max_mx,
        max_addresses=check.max_addresses,
        concurrency=check.concurrency,
        dnsbl_zones=tuple(check.dnsbl_zones),
        check_dane=check.check_dane,
        check_mta_sts=check.check_mta_sts,
        mta_sts_port=check.mta_sts_port,
        mta_sts_ca_file=check.mta_sts_ca_file,
        check_ocsp=check.check_ocsp,
        check_crl=check.check_crl,
        must_refuse=refuse.enabled,
        relay_sender=refuse.relay_sender,
        foreign_recipient=refuse.foreign_recipient,
        local_recipient=refuse.local_recipient,
        timeout=check.timeout,
    )


def domain_outcome(report: DomainReport) -> tuple[str, str]:
    """``success`` for a domain without findings, else ``domain_findings`` naming the first few."""
    problems = report.problems
    if not problems:
        return "success", "ok"
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "domain_findings", f"{len(problems)} findings: {'; '.join(problems[:5])}{more}"


def _quota_of(rec: Recorder) -> dict[str, tuple[int, int]] | None:
    """The run's quota reading as resource (lower case) -> (used, limit); None if none was read."""
    found = rec.facts.get("quota")
    if not isinstance(found, dict):
        return None
    return {res.lower(): (u.used, u.limit) for res, u in found.items() if isinstance(u, Usage)}


def make_masker(loaded: LoadedConfig) -> Masker:
    masker = Masker()
    for username, password in loaded.all_secrets():
        masker.add(password, username)
    return masker


@dataclass
class Runner:
    """Runs probes for the daemon and the one-shot command alike, recording into ``store``."""

    loaded: LoadedConfig
    key: bytes
    ledger: Ledger
    store: ResultStore
    masker: Masker
    history: History | None = None  # the status page's recent runs and failed dialogues
    slots: ServerSlots = field(default_factory=ServerSlots)  # shared across reloads: sessions in flight
    legacy: LegacyCache = field(default_factory=LegacyCache)  # legacy TLS answers, kept across reloads
    ocsp: OCSPCache = field(default_factory=OCSPCache)  # OCSP answers until nextUpdate, kept across reloads
    crl: CRLCache = field(default_factory=CRLCache)  # CRL verdicts until nextUpdate, kept across reloads
    dnsbl: ListingCache = field(default_factory=ListingCache)  # sending-IP DNSBL answers, for cache_for
    no_junk_warned: set[str] = field(default_factory=set)  # probes told once that no junk folder exists
    own_slots: InitVar[bool] = True  # False: the daemon's shared limiter, set by limit_sessions() in _apply
    # probe -> the LOGIN-DELAY its interval was last warned about (one entry per configured POP3 probe)
    delay_warned: dict[str, float] = field(default_factory=dict)

    def __post_init__(self, own_slots: bool) -> None:
        if own_slots:
            self.limit_sessions()

    def limit_sessions(self) -> None:
        """Apply this config's session limits to the limiter; on the event loop (it wakes waiters), and
        only once the config is really taken (a reload prepared on a worker thread may still fail)."""
        g = self.loaded.config.global_
        self.slots.configure(
            g.max_sessions, session_limits(self.loaded), g.queue_timeout, known=session_pools(self.loaded)
        )

    async def _attempt(self, name: str, run: Callable[[], Awaitable[T]], deadline: float) -> Attempt[T]:
        """Run under the deadline; every way it can end becomes (value or None, reason, message).

        Time spent waiting for a session slot (the ``queue`` phase) moves the deadline on: queueing is
        our own doing and must not turn into a ``timeout`` of the server."""
        try:
            async with asyncio.timeout(deadline) as cm:

                def extend(seconds: float) -> None:
                    when = cm.when()
                    if when is not None:
                        with contextlib.suppress(RuntimeError):  # already expiring: too late to move
                            cm.reschedule(when + seconds)

                token = deadline_extender.set(extend)
                try:
                    return Attempt(await run(), "success", "ok")
                finally:
                    deadline_extender.reset(token)
        except TimeoutError as exc:
            text = str(exc) if isinstance(exc, ProbeError) else f"no result within the {deadline:g}s deadline"
            return Attempt(None, "timeout", text)
        except ProbeError as exc:
            return Attempt(None, exc.reason, exc.message)
        except Exception as exc:  # a bug, not a mail problem: keep the daemon alive, say so loudly
            log.exception("probe_internal_error", probe=name)
            return Attempt(None, "internal", f"{type(exc).__name__}: {exc}")

    def _finish(
        self,
        name: str,
        rec: Recorder,
        reason: str,
        message: str,
        started: float,
        t0: float,
        delivery: float | None = None,
        late: int = 0,
        swept: int = 0,
        lost: int = 0,
        outstanding: int = 0,
        placement: str | None = None,
        detail: object = None,
        hygiene: dict[str, Hygiene] | None = None,
        sender_dnsbl: tuple[Listing, ...] = (),
    ) -> RunResult:
        run = RunResult(
            probe=name,
            success=reason == "success",
            reason=reason,
            message=self.masker(" ".join(message.split())),
            started=started,
            duration=time.monotonic() - t0,
            phases=dict(rec.phases),
            delivery=delivery,
            late=late,
            swept=swept,
            lost=lost,
            outstanding=outstanding,
            placement=placement,
            tls=dict(rec.tls),
            receiver={k: rec.facts[k] for k in RECEIVER_FACTS if rec.facts.get(k) is not None},
            bounces=tuple(str(b["class"]) for b in rec.facts.get("bounces", ()) if isinstance(b, dict)),
            path=rec.facts.get("path") if reason == "success" else None,
            clock_offset=rec.facts.get("clock_offset") if reason == "success" else None,
            verdict=rec.facts.get("verdict") if reason == "success" else None,
            quota=_quota_of(rec),
            quota_error=rec.facts.get("quota_error"),
            sync_seconds=rec.facts.get("sync_seconds") if reason == "success" else None,
            sync_arrival=rec.facts.get("sync_arrival_seconds") if reason == "success" else None,
            failed_phase=rec.facts.get("current_phase") if reason != "success" else None,
            transcript=None if isinstance(rec.transcript, BoundedTranscript) else rec.transcript,
            detail=detail,
            hygiene=hygiene or {},
            sender_dnsbl=sender_dnsbl,
        )
        if self.history is not None:
            self.history.record(run, rec.transcript)
        self._log(run)
        return run

    def _warn_login_delay(self, probe: RoundTripConfig, run: RunResult) -> None:
        """Once per probe and delay: an interval shorter than the server's LOGIN-DELAY (plus the margin
        we keep) means some runs cannot log in at all (``receive_login_delay``)."""
        delay = run.receiver.get("login_delay")
        interval = self.loaded.config.interval_of(probe)
        if not isinstance(delay, int | float) or delay + LoginGate.MARGIN <= interval:
            return
        if self.delay_warned.get(probe.name) == delay:
            return
        self.delay_warned[probe.name] = delay
        log.warning(
            "pop3_login_delay_exceeds_interval",
            probe=probe.name,
            login_delay_seconds=delay,
            interval_seconds=interval,
            hint=f"set interval to at least {delay + LoginGate.MARGIN:g}s: the server allows one login "
            f"per {delay:g}s and each run needs one",
        )

    def _transcript(self, debug: bool) -> list[str] | None:
        """Everything for --debug; with a status page, a bounded one for the failed-run history."""
        return [] if debug else BoundedTranscript() if self.history is not None else None

    async def run_roundtrip(self, probe: RoundTripConfig, debug: bool = False) -> RunResult:
        rec = Recorder(masker=self.masker, transcript=self._transcript(debug))
        started, t0 = time.time(), time.monotonic()
        settings = roundtrip_settings(self.loaded, probe, self.key, self.slots)

        async def write_ahead(state: str, token: object) -> None:
            if isinstance(token, Token):
                if state == "accepted":  # queued before the run's finish; nothing waits on it
                    self.ledger.record_soon(probe.name, token, state)
                else:  # write-ahead: on disk before DATA
                    await self.ledger.record(probe.name, token, state)

        rec.on_canary = write_ahead
        settled = False
        try:
            awaited = await self.ledger.begin(probe.name)
            attempt = await self._attempt(
                probe.name,
                lambda: probe_roundtrip(settings, rec, awaited),
                self.loaded.config.timeout_of(probe),
            )
            if attempt.reason in ("smtp_tls", "receive_tls"):
                await self._tls_second_look(probe, attempt.reason, rec)
            settled = True  # from here on the ledger operation is queued: it runs even if we are cancelled
            late, swept, lost, outstanding = await self._settle(probe, rec)
            hygiene, spent = await self._hygiene(rec)
            listings, dnsbl_spent = await self._sender_dnsbl(probe, attempt.reason, rec)
            spent += dnsbl_spent
        except asyncio.CancelledError:  # the daemon is stopping: leave the ledger right, say so, go on
            if not settled:
                await self._settle(probe, rec)
            self._log_cancelled(probe.name, rec, t0)
            raise
        delivery = attempt.value.delivery_seconds if attempt.value is not None else None
        run = self._finish(
            probe.name,
            rec,
            attempt.reason,
            attempt.message,
            started,
            t0 + spent,  # the OCSP ask is not part of the round trip's time
            delivery,
            late,
            swept,
            lost=lost,
            outstanding=outstanding,
            placement=attempt.value.placement if attempt.value is not None else None,
            hygiene=hygiene,
            sender_dnsbl=listings,
        )
        self._warn_login_delay(probe, run)
        return run

    async def _sender_dnsbl(
        self, probe: RoundTripConfig, reason: str, rec: Recorder
    ) -> tuple[tuple[Listing, ...], float]:
        """The sending IP the receiver saw against the configured zones (delivered runs only), and the
        time it took (not the round trip's). Never changes the run's outcome; the TXT reason is logged."""
        conf = probe.sender_dnsbl
        address = rec.facts.get("sender_ip")
        if conf is None or reason != "success" or not isinstance(address, str):
            return (), 0.0
        t0 = time.monotonic()
        settings = DNSSettings(
            nameservers=tuple(conf.resolvers), port=conf.resolver_port, timeout=conf.timeout
        )
        listings = tuple(
            [await self.dnsbl.lookup(address, zone, settings, conf.cache_for) for zone in conf.zones]
        )
        for li in listings:
            if li.status != "not_listed":
                log.warning(
                    "sender_dnsbl",
                    probe=probe.name,
                    address=address,
                    zone=li.zone,
                    status=li.status,
                    codes=list(li.codes),
                    reason=li.reason,
                )
        rec.facts["sender_dnsbl"] = {li.zone: li.status for li in listings}
        return listings, time.monotonic() - t0

    async def _settle(self, probe: RoundTripConfig, rec: Recorder) -> tuple[int, int, int, int]:
        """One ledger transaction at the end of a run: (late, swept, lost, outstanding)."""
        seen_before: list[Token] = rec.facts.get("swept", [])
        token = rec.facts.get("token")
        late, lost, outstanding = await self.ledger.finish(
            probe.name,
            token if isinstance(token, Token) else None,
            # accepted, unseen: if it turns up later it is late; bounced: it never will
            accepted=bool(rec.facts.get("accepted")) and not rec.facts.get("bounced"),
            seen=bool(rec.facts.get("seen")),
            swept=seen_before,
            lost_after=probe.lost_after,
        )
        return late, len(seen_before) - late, lost, outstanding

    def _log_cancelled(self, name: str, rec: Recorder, t0: float) -> None:
        """The one log line of a run cut short by shutdown (not recorded: the process is going away)."""
        log.warning(
            "probe_run",
            probe=name,
            outcome="cancelled",
            reason="cancelled",
            error="stopped before the run finished (daemon shutdown after the grace period)",
            failed_phase=rec.facts.get("current_phase"),
            duration_seconds=round(time.monotonic() - t0, 4),
            phases={k: round(v, 4) for k, v in rec.phases.items()},
        )

    async def _tls_second_look(self, probe: RoundTripConfig, reason: str, rec: Recorder) -> None:
        """The round trip failed at TLS: audit that endpoint anyway, so expiry and reason are exported."""
        side = probe.smtp if reason == "smtp_tls" else probe.receive
        protocol = "smtp" if reason == "smtp_tls" else probe.receive.protocol
        if side.tls == "none":
            return
        endpoint = endpoint_of(side, protocol)
        settings = TLSCheckSettings(
            endpoint=endpoint,
            protocol=protocol,
            timeout=side.timeout,
            check_legacy=False,
            helo_name=getattr(side, "helo", None),
            slots=self.slots,  # one more session on that server: it counts against the limit too
        )
        scratch = Recorder(masker=rec.masker)
        try:
            async with asyncio.timeout(side.timeout * 3):
                await probe_tls(settings, scratch)
        except (ProbeError, TimeoutError):
            pass  # whatever was learnt is in scratch.tls
        rec.tls.update(scratch.tls)

    async def run_tls_check(self, check: TLSCheckConfig, debug: bool = False) -> RunResult:
        rec = Recorder(masker=self.masker, transcript=self._transcript(debug))
        started, t0 = time.time(), time.monotonic()
        settings = tls_check_settings(check, check.host, check.port, self.slots, self.legacy)
        try:
            attempt = await self._attempt(
                check.name, lambda: probe_tls(settings, rec), check.timeout * TLS_CHECK_STEPS
            )
            hygiene, spent = await self._hygiene(rec)
        except asyncio.CancelledError:
            self._log_cancelled(check.name, rec, t0)
            raise
        reason, message = attempt.reason, attempt.message
        facts = attempt.value
        if facts is not None:
            reason = tls_outcome(facts)
            if reason != "success":
                message = facts.error or f"certificate not verified: {facts.verify_reason}"
        return self._finish(check.name, rec, reason, message, started, t0 + spent, hygiene=hygiene)

    async def _hygiene(self, rec: Recorder) -> tuple[dict[str, Hygiene], float]:
        """Certificate hygiene of every chain this run saw (no new session to the server; OCSP answers
        cached until nextUpdate). Returns the facts and the seconds spent, which the run's duration
        leaves out."""
        t = time.monotonic()
        out: dict[str, Hygiene] = {}
        g = self.loaded.config.global_
        for endpoint, facts in rec.tls.items():
            chain = [c.der for c in facts.chain]
            found = await chain_hygiene(
                chain,
                check_ocsp=g.check_ocsp,
                timeout=g.ocsp_timeout,
                cache=self.ocsp,
                check_crl=g.check_crl,
                crl_cache=self.crl,
            )
            if found is not None:
                out[endpoint] = found
        return out, time.monotonic() - t

    async def run_domain_check(self, check: DomainCheckConfig, debug: bool = False) -> RunResult:
        rec = Recorder(masker=self.masker, transcript=self._transcript(debug))
        started, t0 = time.time(), time.monotonic()
        settings = domain_settings(check, self.slots)
        try:
            attempt = await self._attempt(
                check.name,
                lambda: probe_domain(settings, rec, self.ocsp, self.crl),
                check.timeout * check.steps,
            )
        except asyncio.CancelledError:
            self._log_cancelled(check.name, rec, t0)
            raise
        reason, message = attempt.reason, attempt.message
        if attempt.value is not None:
            reason, message = domain_outcome(attempt.value)
        return self._finish(check.name, rec, reason, message, started, t0, detail=attempt.value)

    def _warn_no_junk(self, run: RunResult) -> None:
        """Placement on and no junk folder: one warning per probe (again only after one was found), as
        every canary filed as spam will then time out; the series says it at every run."""
        found = run.receiver.get("junk_folder_found")
        if found is True:
            self.no_junk_warned.discard(run.probe)
        elif found is False and run.probe not in self.no_junk_warned:
            self.no_junk_warned.add(run.probe)
            log.warning(
                "junk_folder_missing",
                probe=run.probe,
                message="placement is on but the mailbox has no junk folder (no SPECIAL-USE \\Junk, no "
                "receive.junk_folders name matched): a canary filed as spam will time out",
            )

    def _log(self, run: RunResult) -> None:
        self.store.record(run)
        fields: dict[str, object] = {
            "probe": run.probe,
            "outcome": run.reason,
            "duration_seconds": round(run.duration, 4),
            "phases": {k: round(v, 4) for k, v in run.phases.items()},
        }
        if run.delivery is not None:
            fields["delivery_seconds"] = round(run.delivery, 4)
        if run.placement is not None:
            fields["placement"] = run.placement
        fields.update(run.receiver)
        if run.verdict is not None and (run.verdict.auth or run.verdict.scores or run.verdict.ignored):
            fields["verdict"] = {
                **run.verdict.auth,
                **({"authserv_id": run.verdict.authserv_id} if run.verdict.authserv_id else {}),
                **({"ignored_fields": run.verdict.ignored} if run.verdict.ignored else {}),
                **{f"{engine}_score": score for engine, score in run.verdict.scores.items()},
            }
        if run.path is not None:
            fields["path"] = {
                "hops": run.path.count,
                "tls": [h.tls for h in run.path.hops],
                "delays_seconds": run.path.delays(),
                "total_seconds": run.path.total,
                **({"truncated": True} if run.path.truncated else {}),
            }
        if run.late or run.swept or run.lost:
            fields.update(late=run.late, swept=run.swept, lost=run.lost)
        tls = {
            endpoint: {
                "version": facts.version,
                "verified": facts.verified,
                "days_left": round((facts.earliest_not_after - time.time()) / 86400, 1),
            }
            for endpoint, facts in run.tls.items()
            if facts.earliest_not_after is not None
        }
        if tls:
            fields["tls"] = tls
        self._warn_no_junk(run)
        if run.success:
            log.info("probe_run", **fields)
        else:
            log.warning(
                "probe_run", reason=run.reason, error=run.message, failed_phase=run.failed_phase, **fields
            )
