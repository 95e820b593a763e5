"""Loading the YAML configuration: read (size-capped), parse strictly, validate against the models,
resolve secrets; every problem a line that names file, key and problem."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from exporter.config.errors import ConfigError, validation_problems
from exporter.config.model import SECTIONS, Config, EndpointConfig, RoundTripConfig
from exporter.config.secrets import raw_problems, read_secret, without_passwords
from exporter.config.yamlfile import load_yaml, read_text_capped
from probes.auth.credentials import TokenSource
from probes.auth.oauth import FileToken, GrantToken


@dataclass
class LoadedConfig:
    path: str
    config: Config
    secrets: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)  # (probe, side) -> password
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what check-config says will happen (not a problem)
    digest: str = ""
    # (username, settings and secrets) -> source; never in a repr or a log
    token_sources: dict[tuple[str, str], TokenSource] = field(default_factory=dict, repr=False)

    def password(self, probe: str, side: str) -> str:
        return self.secrets[(probe, side)]

    def all_secrets(self) -> Iterable[tuple[str, str]]:
        """(username, secret) pairs (passwords, OAuth client secrets and refresh tokens), for the log and
        transcript masker."""
        for probe in self.config.roundtrip:
            for side, ep in probe.sides():
                for key in (side, f"{side}.client_secret", f"{side}.refresh_token"):
                    if (probe.name, key) in self.secrets and ep.username:
                        yield ep.username, self.secrets[(probe.name, key)]

    def token_source(self, probe: RoundTripConfig, side: str) -> TokenSource | None:
        """The OAuth token source of one side of a probe, made once per loaded config so that its
        cached token outlives a run (None: a password login)."""
        ep: EndpointConfig = probe.smtp if side == "smtp" else probe.receive
        oauth = ep.oauth
        if oauth is None:
            return None
        # Keyed by what the token is for: two sides (or probes) with the same account and endpoint share
        # one token and one refresh, as one mail client would.
        key = (
            str(ep.username),
            oauth.model_dump_json()
            + "\0"
            + (self.secrets.get((probe.name, f"{side}.client_secret")) or "")
            + "\0"
            + (self.secrets.get((probe.name, f"{side}.refresh_token")) or ""),
        )
        found = self.token_sources.get(key)
        if found is not None:
            return found
        source: TokenSource
        if oauth.token_file is not None:
            source = FileToken(oauth.token_file)
        else:
            assert oauth.token_url is not None and oauth.client_id is not None
            source = GrantToken(
                token_url=oauth.token_url,
                client_id=oauth.client_id,
                client_secret=self.secrets.get((probe.name, f"{side}.client_secret")),
                refresh_token=self.secrets.get((probe.name, f"{side}.refresh_token")),
                scopes=tuple(oauth.scopes),
                timeout=oauth.timeout,
            )
        self.token_sources[key] = source
        return source


def parse_config(text: str, path: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Parse and validate; raises ConfigError listing every problem found."""
    environ = dict(os.environ) if environ is None else environ
    data = load_yaml(text, path)
    if data is None:
        raise ConfigError(
            [
                f"{path}: (top level): the file is empty (a truncated write?); a config with no probes "
                "says so explicitly, e.g. `roundtrip: []`"
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: (top level): must be a mapping with keys global, roundtrip, tls_checks"])
    # A section left empty ("roundtrip:" with nothing under it) means "none", not "null".
    data = {k: v for k, v in data.items() if not (v is None and k in SECTIONS)}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Structure first, but also what can be told from the raw data, so one run lists it all.
        found = validation_problems(path, exc) + raw_problems(path, data, environ)
        raise ConfigError(list(dict.fromkeys(found))) from None
    loaded = LoadedConfig(path=path, config=config)
    loaded.notes += source_notes(config, path)
    problems: list[str] = []
    for i, probe in enumerate(config.roundtrip):
        for side, ep in probe.sides():
            where = f"roundtrip[{i}].{side}"
            secret, problem = read_secret(
                path, where, ep.password, ep.password_file, ep.password_env, environ
            )
            if problem is not None:
                problems.append(problem)
            if secret is not None:
                loaded.secrets[(probe.name, side)] = secret
            if ep.oauth is not None:
                for base in ("client_secret", "refresh_token"):
                    value, problem = read_secret(
                        path,
                        f"{where}.oauth",
                        getattr(ep.oauth, base),
                        getattr(ep.oauth, f"{base}_file"),
                        getattr(ep.oauth, f"{base}_env"),
                        environ,
                        key=base,
                    )
                    if problem is not None:
                        problems.append(problem)
                    if value is not None:
                        loaded.secrets[(probe.name, f"{side}.{base}")] = value
            if ep.password is not None:
                loaded.warnings.append(
                    f"{path}: {where}.password: inline password; prefer password_file or password_env"
                )
        sync = probe.receive.sync
        if sync is not None and sync.enabled and sync.timeout >= config.timeout_of(probe):
            loaded.warnings.append(
                f"{path}: roundtrip[{i}].receive.sync.timeout: not shorter than the probe's timeout; "
                "a sync that never shows ends as timeout, not sync_timeout"
            )
        if config.timeout_of(probe) > config.interval_of(probe):
            loaded.warnings.append(
                f"{path}: roundtrip[{i}].timeout: longer than the interval; "
                "a run that overruns skips the next slot"
            )
    if config.global_.canary_key_file is not None and not os.access(config.global_.canary_key_file, os.R_OK):
        problems.append(f"{path}: global.canary_key_file: cannot read {config.global_.canary_key_file}")
    if problems:
        raise ConfigError(problems)
    # Digest of the validated config without its passwords: an inline password must not be
    # confirmable offline from /metrics.
    public = json.dumps(without_passwords(config.model_dump(mode="json")), sort_keys=True)
    loaded.digest = hashlib.sha256(public.encode()).hexdigest()[:12]
    return loaded


def source_notes(config: Config, path: str) -> list[str]:
    """Where each domain check connects from, per address family (said by check-config): a source
    address binds only to its own family, the other family uses the system's default source."""
    out: list[str] = []
    for i, check in enumerate(config.domain_checks):
        sources = check.source_addresses
        if not sources:
            continue
        by_family = {ipaddress.ip_address(a).version: a for a in sources}
        said = [
            f"IPv{v} from {by_family[v]}" if v in by_family else f"IPv{v} from the default source"
            for v in (4, 6)
        ]
        out.append(
            f"{path}: domain_checks[{i}].source_address: MX addresses (and the MTA-STS, OCSP and CRL "
            f"servers) are connected {', '.join(said)}"
        )
    return out


def load_config(path: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Read (size-capped), parse and validate. Blocking and possibly slow: the daemon calls it on a
    worker thread, so a reload never stalls probes or scrapes."""
    return parse_config(read_text_capped(path), path, environ)
