"""The round trip: a canary sent by SMTP, found over IMAP or POP3, measured, cleaned up (section
``roundtrip``). Besides the probe, a run keeps the write-ahead ledger of canaries (so a late canary is
counted, never lost), audits an endpoint whose TLS failed, and checks the sending IP against DNSBLs."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import structlog

from exporter.config import Config, LoadedConfig, ReceiveConfig, RoundTripConfig, load_endpoint_secrets
from exporter.metrics.roundtrip import roundtrip_families
from exporter.registry import Kind, RunEnv, Settled, Verdict
from exporter.run import report
from exporter.run.results import OUTCOMES, RunResult
from exporter.run.settings import endpoint_of
from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSettings
from probes.clients.pop3 import LoginGate
from probes.clients.smtp import SMTPSettings
from probes.context import ProbeContext
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import (
    PollSchedule,
    POP3Settings,
    RoundTripResult,
    RoundTripSettings,
    SyncSettings,
    probe_roundtrip,
)
from probes.tls.scanning import SCAN_STEPS
from probes.wire.framing import ReadLimits
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots, maybe_session

if TYPE_CHECKING:  # the TLS audit and DNSBL lookups load when a run needs them (a TLS failure, scan, DNSBL)
    from probes.domain.dnsbl import Listing

log = structlog.get_logger("mailcanary.runner")


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
        poll=PollSchedule(initial=rc.first_gap, factor=rc.gap_factor, maximum=rc.max_gap),
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


async def probe(settings: RoundTripSettings, ctx: ProbeContext) -> RoundTripResult:
    """The one probe signature: the library's round trip with the late-canary registry from ``ctx``."""
    return await probe_roundtrip(settings, ctx.recorder, ctx.late)


def judge(value: RoundTripResult | None, reason: str, message: str) -> Verdict:
    if value is None:
        return Verdict(reason, message)
    return Verdict(reason, message, delivery=value.delivery_seconds, placement=value.placement)


class RoundTripRun:
    """One run's ledger work around the probe: begin (which canaries count late), the write-ahead
    record of each canary, and one settling transaction at the end, which runs even if the run is
    cancelled; then a TLS second look, the sender's DNSBL and the TLS scan of each side."""

    def __init__(self, probe: RoundTripConfig, env: RunEnv, ctx: ProbeContext) -> None:
        self.probe, self.env, self.ctx = probe, env, ctx
        self.settled = False
        rec = ctx.recorder
        ledger = env.ledger

        async def write_ahead(state: str, token: object) -> None:
            if isinstance(token, Token):
                if state == "accepted":  # queued before the run's finish; nothing waits on it
                    ledger.record_soon(probe.name, token, state)
                else:  # write-ahead: on disk before DATA
                    await ledger.record(probe.name, token, state)

        rec.on_canary = write_ahead

    async def begin(self) -> None:
        self.ctx.late = await self.env.ledger.begin(self.probe.name)

    async def after(self, reason: str) -> Settled:
        rec = self.ctx.recorder
        if reason in ("smtp_tls", "receive_tls"):
            await self._tls_second_look(reason, rec)
        self.settled = True  # from here on the ledger operation is queued: it runs even if we are cancelled
        late, swept, lost, outstanding = await self._settle(rec)
        listings, spent = await self._sender_dnsbl(reason, rec)
        spent += await self._scan_sides(rec)
        return Settled(late, swept, lost, outstanding, listings, spent)

    async def cancelled(self) -> None:
        """The daemon is stopping: leave the ledger right."""
        if not self.settled:
            await self._settle(self.ctx.recorder)

    def finished(self, run: RunResult) -> None:
        self._warn_login_delay(run)

    async def _tls_second_look(self, reason: str, rec: Recorder) -> None:
        """The round trip failed at TLS: audit that endpoint anyway, so expiry and reason are exported."""
        probe = self.probe
        side = probe.smtp if reason == "smtp_tls" else probe.receive
        protocol = "smtp" if reason == "smtp_tls" else probe.receive.protocol
        if side.tls == "none":
            return
        endpoint = endpoint_of(side, protocol)
        from probes.tls.audit import TLSCheckSettings, probe_tls

        settings = TLSCheckSettings(
            endpoint=endpoint,
            protocol=protocol,
            timeout=side.timeout,
            check_legacy=False,
            helo_name=getattr(side, "helo", None),
            slots=self.env.slots,  # one more session on that server: it counts against the limit too
        )
        scratch = Recorder(masker=rec.masker)
        try:
            async with asyncio.timeout(side.timeout * 4):  # verified, permissive and unverified looks
                await probe_tls(settings, scratch)
        except (ProbeError, TimeoutError):
            pass  # whatever was learnt is in scratch.tls
        rec.tls.update(scratch.tls)

    async def _scan_sides(self, rec: Recorder) -> float:
        """The TLS scan of each side this run secured (``scan: true``): the remembered one while fresh
        (no connection), else a new one through the session slots. Outside the run's time and phases
        (returns the seconds it took), in its own time bound, and it never changes the run's outcome."""
        t0 = time.monotonic()
        probe = self.probe
        sides = [("smtp", probe.smtp, "smtp"), ("receive", probe.receive, probe.receive.protocol)]
        for _, side, protocol in sides:
            endpoint = endpoint_of(side, protocol)
            facts = rec.tls.get(endpoint.address)
            if not side.scan or side.tls == "none" or facts is None:
                continue  # not asked, no TLS, or the run never reached this side's TLS
            from probes.tls.audit import TLSCheckSettings, scan_key, scan_step

            settings = TLSCheckSettings(
                endpoint=endpoint,
                protocol=protocol,
                timeout=side.timeout,
                check_legacy=False,  # the round trip never tested legacy versions: not now either
                helo_name=getattr(side, "helo", None),
                slots=self.env.slots,
                scan=True,
                scan_cache=self.env.scans,
                scan_recheck=side.scan_recheck,
            )
            # Its phases (queue, tls_scan) are not the run's; its dialogue is shown with --debug only
            # (a failed run's kept dialogue must end with the failure, not with a dozen hellos).
            transcript = rec.transcript if self.ctx.debug else None
            scratch = Recorder(masker=rec.masker, transcript=transcript, clock=rec.clock)
            try:
                async with asyncio.timeout(side.timeout * (SCAN_STEPS + 1)):
                    fingerprint = facts.leaf.fingerprint_sha256 if facts.leaf else None
                    if self.env.scans.fresh(scan_key(settings), fingerprint, side.scan_recheck):
                        await scan_step(settings, facts, scratch)  # remembered: no session needed
                    else:
                        async with maybe_session(self.env.slots, endpoint, protocol, scratch):
                            await scan_step(settings, facts, scratch)
            except (ProbeError, TimeoutError) as exc:  # no slot in time: this run shows no scan
                log.info("tls_scan_skipped", probe=probe.name, endpoint=endpoint.address, reason=str(exc))
        return time.monotonic() - t0

    async def _settle(self, rec: Recorder) -> tuple[int, int, int, int]:
        """One ledger transaction at the end of a run: (late, swept, lost, outstanding)."""
        probe = self.probe
        seen_before = rec.facts.swept
        late, lost, outstanding = await self.env.ledger.finish(
            probe.name,
            rec.facts.token,
            # accepted, unseen: if it turns up later it is late; bounced: it never will
            accepted=rec.facts.accepted and not rec.facts.bounced,
            seen=rec.facts.seen,
            swept=seen_before,
            lost_after=probe.lost_after,
        )
        return late, len(seen_before) - late, lost, outstanding

    async def _sender_dnsbl(self, reason: str, rec: Recorder) -> tuple[tuple[Listing, ...], float]:
        """The sending IP the receiver saw against the configured zones (delivered runs only), and the
        time it took (not the round trip's). Never changes the run's outcome; the TXT reason is logged."""
        probe = self.probe
        conf = probe.sender_dnsbl
        address = rec.facts.sender_ip
        if conf is None or reason != "success" or address is None:
            return (), 0.0
        t0 = time.monotonic()
        from probes.wire.dns import DNSSettings

        settings = DNSSettings(
            nameservers=tuple(conf.resolvers), port=conf.resolver_port, timeout=conf.timeout
        )
        listings = tuple(
            [await self.env.dnsbl.lookup(address, zone, settings, conf.cache_for) for zone in conf.zones]
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
        rec.facts.sender_dnsbl = {li.zone: li.status for li in listings}
        return listings, time.monotonic() - t0

    def _warn_login_delay(self, run: RunResult) -> None:
        """Once per probe and delay: an interval shorter than the server's LOGIN-DELAY (plus the margin
        we keep) means some runs cannot log in at all (``receive_login_delay``)."""
        delay = run.receiver.get("login_delay")
        probe = self.probe
        interval = self.env.loaded.config.interval_of(probe)
        if not isinstance(delay, int | float) or delay + LoginGate.MARGIN <= interval:
            return
        if self.env.delay_warned.get(probe.name) == delay:
            return
        self.env.delay_warned[probe.name] = delay
        log.warning(
            "pop3_login_delay_exceeds_interval",
            probe=probe.name,
            login_delay_seconds=delay,
            interval_seconds=interval,
            hint=f"set interval to at least {delay + LoginGate.MARGIN:g}s: the server allows one login "
            f"per {delay:g}s and each run needs one",
        )


def check(cfg: Config, probe: RoundTripConfig, where: str) -> None:
    """Against the global section: interval and timeout, and enough sessions for what a run opens."""
    interval, timeout = cfg.interval_of(probe), cfg.timeout_of(probe)
    if interval < 1:
        raise ValueError(f"{where}.interval: must be at least 1s")
    if timeout <= 0:
        raise ValueError(f"{where}.timeout: must be > 0")
    rc = probe.receive
    sync = rc.sync is not None and rc.sync.enabled
    needed = 1 + int(rc.junk) + int(rc.placement_all_folders) + int(sync)  # sessions a run opens
    limit = rc.max_sessions if rc.max_sessions is not None else cfg.global_.max_sessions
    if limit < needed:
        raise ValueError(
            f"{where}.receive.max_sessions: {limit} is fewer than the {needed} sessions a run "
            "opens with junk/placement_all_folders/sync (it would always end in queue_timeout)"
        )


def load(loaded: LoadedConfig, probe: RoundTripConfig, where: str, environ: dict[str, str]) -> list[str]:
    """Read each side's password or OAuth secrets (a missing one is a config error now, not a failed
    run later) and warn about timeouts that cannot work."""
    path, config = loaded.path, loaded.config
    problems: list[str] = []
    for side, ep in probe.sides():
        problems += load_endpoint_secrets(loaded, probe.name, side, f"{where}.{side}", ep, environ)
    sync = probe.receive.sync
    if sync is not None and sync.enabled and sync.timeout >= config.timeout_of(probe):
        loaded.warnings.append(
            f"{path}: {where}.receive.sync.timeout: not shorter than the probe's timeout; "
            "a sync that never shows ends as timeout, not sync_timeout"
        )
    if config.timeout_of(probe) > config.interval_of(probe):
        loaded.warnings.append(
            f"{path}: {where}.timeout: longer than the interval; a run that overruns skips the next slot"
        )
    return problems


def notes(cfg: Config, probe: RoundTripConfig, where: str) -> list[str]:
    """A POP3 server's LOGIN-DELAY cannot be known without asking it, and check-config asks no one."""
    if probe.receive.protocol != "pop3":
        return []
    return [
        f"{where}.receive: a POP3 server's LOGIN-DELAY is learnt at the first "
        f"run; if it exceeds the interval ({cfg.interval_of(probe):g}s) the daemon logs "
        "pop3_login_delay_exceeds_interval (see mailcanary_receive_login_delay_seconds)"
    ]


def sessions(probe: RoundTripConfig) -> list[tuple[Endpoint, str, int | None]]:
    """(endpoint, service, max_sessions) of every server a run talks to."""
    rc = probe.receive
    sides = [
        (endpoint_of(probe.smtp, "smtp"), "smtp", probe.smtp.max_sessions),
        (endpoint_of(rc, rc.protocol), rc.protocol, rc.max_sessions),
    ]
    if probe.bounce_receive is not None:
        br = probe.bounce_receive
        sides.append((endpoint_of(br, br.protocol), br.protocol, br.max_sessions))
    return sides


def endpoints(probe: RoundTripConfig) -> set[str]:
    return {
        endpoint_of(probe.smtp, "smtp").address,
        endpoint_of(probe.receive, probe.receive.protocol).address,
    }


KIND = Kind(
    name="roundtrip",
    section="roundtrip",
    model=RoundTripConfig,
    settings=lambda probe, env: roundtrip_settings(env.loaded, probe, env.key, env.slots),
    probe=probe,
    deadline=lambda probe, cfg: cfg.timeout_of(probe),
    outcomes=OUTCOMES,
    families=roundtrip_families,
    noun="probe",
    plural="round-trip probes",
    judge=judge,
    endpoints=endpoints,
    spec=lambda cfg, probe: (probe, cfg.timeout_of(probe)),
    hygiene=True,
    hooks=RoundTripRun,
    ledger=True,
    sessions=sessions,
    check=check,
    load=load,
    notes=notes,
    secret_sides=("smtp", "receive", "bounce_receive"),
    count_zero=True,
    done="round trips delivered",
    claims=lambda run: run.delivery is not None or run.placement is not None,
    report_facts=report.fact_lines,
    perfdata=report.perfdata,
)
