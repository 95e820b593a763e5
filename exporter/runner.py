"""The one place where probe runs get a deadline and exceptions become outcomes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from probes._net import Credentials, Endpoint, TLSSettings
from probes.canary import Token
from probes.errors import ProbeError
from probes.imap import IMAPSettings
from probes.recorder import Masker, Recorder
from probes.roundtrip import PollSchedule, POP3Settings, RoundTripSettings, probe_roundtrip
from probes.smtp import SMTPSettings

from .config import EndpointConfig, LoadedConfig, RoundTripConfig, default_port
from .results import ResultStore, RunResult
from .state import Ledger

log = structlog.get_logger("mailcanary.runner")


def _endpoint(ep: EndpointConfig, protocol: str) -> Endpoint:
    tc = ep.tls_config
    return Endpoint(
        host=ep.host,
        port=ep.port or default_port(protocol, ep.tls),
        tls_mode=ep.tls,
        tls=TLSSettings(
            ca_file=tc.ca_file,
            server_name=tc.server_name,
            insecure_skip_verify=tc.insecure_skip_verify,
            cert_file=tc.cert_file,
            key_file=tc.key_file,
        ),
        source_address=ep.source_address,
    )


def roundtrip_settings(loaded: LoadedConfig, probe: RoundTripConfig, key: bytes) -> RoundTripSettings:
    """Translate config into the probe library's settings (the library knows nothing of YAML)."""
    smtp_creds = (
        Credentials(probe.smtp.username, loaded.password(probe.name, "smtp")) if probe.smtp.username else None
    )
    rc = probe.receive
    assert rc.username is not None
    recv_creds = Credentials(rc.username, loaded.password(probe.name, "receive"))
    recv_ep = _endpoint(rc, rc.protocol)
    receiver: IMAPSettings | POP3Settings
    if rc.protocol == "imap":
        receiver = IMAPSettings(
            endpoint=recv_ep,
            credentials=recv_creds,
            allow_plaintext_auth=rc.allow_plaintext_auth,
            mailbox=rc.mailbox,
            timeout=rc.timeout,
            use_idle=rc.idle,
        )
    else:
        receiver = POP3Settings(
            endpoint=recv_ep,
            credentials=recv_creds,
            allow_plaintext_auth=rc.allow_plaintext_auth,
            timeout=rc.timeout,
        )
    return RoundTripSettings(
        name=probe.name,
        smtp=SMTPSettings(
            endpoint=_endpoint(probe.smtp, "smtp"),
            credentials=smtp_creds,
            allow_plaintext_auth=probe.smtp.allow_plaintext_auth,
            helo_name=probe.smtp.helo,
            timeout=probe.smtp.timeout,
        ),
        receiver=receiver,
        sender=probe.sender,
        recipient=probe.recipient,
        key=key,
        poll=PollSchedule(initial=rc.poll_initial, factor=rc.poll_factor, maximum=rc.poll_max),
        sweep_after=probe.sweep_after,
    )


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

    async def run_roundtrip(self, probe: RoundTripConfig, debug: bool = False) -> RunResult:
        timeout = self.loaded.config.timeout_of(probe)
        rec = Recorder(masker=self.masker, transcript=[] if debug else None)
        started, t0 = time.time(), time.monotonic()
        reason, message, delivery, late, swept = "success", "ok", None, 0, 0
        try:
            settings = roundtrip_settings(self.loaded, probe, self.key)
            async with asyncio.timeout(timeout):
                result = await probe_roundtrip(settings, rec, self.ledger.nonces(probe.name))
            delivery = result.delivery_seconds
        except TimeoutError as exc:
            reason = "timeout"
            message = (
                str(exc) if isinstance(exc, ProbeError) else f"no result within the {timeout:g}s timeout"
            )
        except ProbeError as exc:
            reason, message = exc.reason, exc.message
        except Exception as exc:  # a bug, not a mail problem: keep the daemon alive, say so loudly
            reason, message = "internal", f"{type(exc).__name__}: {exc}"
            log.exception("probe_internal_error", probe=probe.name)
        seen_before: list[Token] = rec.facts.get("swept", [])
        if seen_before:
            late = self.ledger.settle(probe.name, seen_before)
            swept = len(seen_before) - late
        token = rec.facts.get("token")
        if reason != "success" and isinstance(token, Token) and not rec.facts.get("seen"):
            self.ledger.add(probe.name, token)  # in flight and unseen: if it turns up later it is late
        run = RunResult(
            probe=probe.name,
            success=reason == "success",
            reason=reason,
            message=self.masker(" ".join(message.split())),
            started=started,
            duration=time.monotonic() - t0,
            phases=dict(rec.phases),
            delivery=delivery,
            late=late,
            swept=swept,
            tls=dict(rec.tls),
            failed_phase=rec.facts.get("current_phase"),
            transcript=rec.transcript,
        )
        self.store.record(run)
        fields = {
            "probe": probe.name,
            "outcome": run.reason,
            "duration_seconds": round(run.duration, 4),
            "phases": {k: round(v, 4) for k, v in run.phases.items()},
        }
        if delivery is not None:
            fields["delivery_seconds"] = round(delivery, 4)
        if late or swept:
            fields.update(late=late, swept=swept)
        if run.success:
            log.info("probe_run", **fields)
        else:
            log.warning("probe_run", reason=run.reason, error=run.message, **fields)
        return run
