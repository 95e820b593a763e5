"""Loading the YAML configuration: read (size-capped), parse strictly, validate against the models,
resolve secrets; every problem a line that names file, key and problem."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from exporter import registry
from exporter.config.errors import ConfigError, validation_problems
from exporter.config.model import Config, EndpointConfig, config_model, sections
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
    usernames: dict[tuple[str, str], str] = field(default_factory=dict)  # (probe, secret key) -> its login

    def password(self, probe: str, side: str) -> str:
        return self.secrets[(probe, side)]

    def all_secrets(self) -> Iterable[tuple[str, str]]:
        """(username, secret) pairs (passwords, OAuth client secrets and refresh tokens), for the log and
        transcript masker."""
        for key, secret in self.secrets.items():
            username = self.usernames.get(key)
            if username:
                yield username, secret

    def token_source(self, probe: Any, side: str) -> TokenSource | None:
        """The OAuth token source of one side (an endpoint key) of an entry, made once per loaded config
        so that its cached token outlives a run (None: a password login)."""
        ep: EndpointConfig = getattr(probe, side)
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
    keys = sections()  # global, each kind's section, modules, probe_endpoint
    if data is None:
        raise ConfigError(
            [
                f"{path}: (top level): the file is empty (a truncated write?); a config with no probes "
                f"says so explicitly, e.g. `{keys[1]}: []`"
            ]
        )
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: (top level): must be a mapping with keys {', '.join(keys[:3])}"])
    # A section left empty ("roundtrip:" with nothing under it) means "none", not "null".
    data = {k: v for k, v in data.items() if not (v is None and k in keys)}
    try:
        config = config_model().model_validate(data)
    except ValidationError as exc:
        # Structure first, but also what can be told from the raw data, so one run lists it all.
        found = validation_problems(path, exc) + raw_problems(path, data, environ)
        raise ConfigError(list(dict.fromkeys(found))) from None
    loaded = LoadedConfig(path=path, config=config)
    problems: list[str] = []
    for kind in registry.kinds():
        if kind.load is not None:
            for i, entry in enumerate(kind.entries(config)):
                problems += kind.load(loaded, entry, f"{kind.section}[{i}]", environ)
    if config.global_.canary_key_file is not None and not os.access(config.global_.canary_key_file, os.R_OK):
        problems.append(f"{path}: global.canary_key_file: cannot read {config.global_.canary_key_file}")
    if problems:
        raise ConfigError(problems)
    # Digest of the validated config without its passwords: an inline password must not be
    # confirmable offline from /metrics.
    public = json.dumps(without_passwords(config.model_dump(mode="json")), sort_keys=True)
    loaded.digest = hashlib.sha256(public.encode()).hexdigest()[:12]
    return loaded


def load_config(path: str, environ: dict[str, str] | None = None) -> LoadedConfig:
    """Read (size-capped), parse and validate. Blocking and possibly slow: the daemon calls it on a
    worker thread, so a reload never stalls probes or scrapes."""
    return parse_config(read_text_capped(path), path, environ)


def load_endpoint_secrets(
    loaded: LoadedConfig, name: str, side: str, at: str, ep: EndpointConfig, environ: dict[str, str]
) -> list[str]:
    """Read one endpoint's password and OAuth secrets into ``loaded`` (keys ``(name, side)`` and
    ``(name, side.client_secret|refresh_token)``, each with its username for the masker); returns the
    problems (a missing secret is a config error at load, not a failed run later). One rule for every
    kind that logs in (round trip sides, heartbeat and reports mailboxes)."""
    path = loaded.path
    problems: list[str] = []
    secret, problem = read_secret(path, at, ep.password, ep.password_file, ep.password_env, environ)
    if problem is not None:
        problems.append(problem)
    if secret is not None:
        loaded.secrets[(name, side)] = secret
        if ep.username:
            loaded.usernames[(name, side)] = ep.username
    if ep.oauth is not None:
        for base in ("client_secret", "refresh_token"):
            value, problem = read_secret(
                path,
                f"{at}.oauth",
                getattr(ep.oauth, base),
                getattr(ep.oauth, f"{base}_file"),
                getattr(ep.oauth, f"{base}_env"),
                environ,
                key=base,
            )
            if problem is not None:
                problems.append(problem)
            if value is not None:
                loaded.secrets[(name, f"{side}.{base}")] = value
                if ep.username:
                    loaded.usernames[(name, f"{side}.{base}")] = ep.username
    if ep.password is not None:
        loaded.warnings.append(
            f"{path}: {at}.password: inline password; prefer password_file or password_env"
        )
    return problems
