"""The YAML configuration: a frozen pydantic model, loaded with errors that name file, key and problem.

Secrets are resolved at load time (``password_file`` / ``password_env``) so that a missing secret is a
config error at start or reload, not a probe failure an hour later.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import hashlib
import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from exporter.durations import parse_duration
from probes.auth.credentials import TokenSource
from probes.auth.oauth import FileToken, GrantToken
from probes.canary import PROBE_NAME_RE
from probes.receipt.placement import DEFAULT_JUNK_FOLDERS, MAX_OTHER_FOLDERS
from probes.receipt.verdict import Preset
from probes.roundtrip.probe import DEFAULT_POLL_FACTOR, DEFAULT_POLL_MAX

DEFAULT_CONFIG_PATH = "/etc/mailcanary/mailcanary.yml"
_SECTIONS = ("global", "roundtrip", "tls_checks", "domain_checks", "modules", "probe_endpoint")


def _duration(value: object) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
Port = Annotated[int, Field(ge=1, le=65535)]
TLSModeName = Literal["implicit", "starttls", "none"]

_DEFAULT_PORTS = {
    ("smtp", "implicit"): 465,
    ("smtp", "starttls"): 587,
    ("smtp", "none"): 25,
    ("imap", "implicit"): 993,
    ("imap", "starttls"): 143,
    ("imap", "none"): 143,
    ("pop3", "implicit"): 995,
    ("pop3", "starttls"): 110,
    ("pop3", "none"): 110,
}


class Model(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class TLSConfig(Model):
    ca_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    cert_file: str | None = None
    key_file: str | None = None

    @model_validator(mode="after")
    def _files(self) -> Self:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{key}: cannot read {path}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


Secret = Annotated[str, StringConstraints(strip_whitespace=False, min_length=1)]


class OAuthConfig(Model):
    """OAuth 2.0 login (XOAUTH2 / OAUTHBEARER) instead of a password: a token file kept by something
    else, or a grant against ``token_url`` (refresh token if one is given, else client credentials)."""

    mechanism: Literal["auto", "xoauth2", "oauthbearer"] = "auto"
    token_file: str | None = None
    token_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    client_id: str | None = None
    client_secret: Secret | None = Field(default=None, repr=False)
    client_secret_file: str | None = None
    client_secret_env: str | None = None
    refresh_token: Secret | None = Field(default=None, repr=False)
    refresh_token_file: str | None = None
    refresh_token_env: str | None = None
    scopes: list[str] = []
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _source(self) -> Self:
        if (self.token_file is None) == (self.token_url is None):
            raise ValueError("give exactly one of token_file, token_url")
        secrets = [f"{b}{x}" for b in ("client_secret", "refresh_token") for x in ("", "_file", "_env")]
        grant_keys = [k for k in ("client_id", *secrets) if getattr(self, k) is not None]
        if self.token_file is not None and (grant_keys or self.scopes):
            keys = ", ".join(grant_keys) or "scopes"
            raise ValueError(f"token_file: not with {keys} (those need token_url)")
        if self.token_url is not None and self.client_id is None:
            raise ValueError("token_url needs client_id")
        for base in ("client_secret", "refresh_token"):
            given = [k for k in (base, f"{base}_file", f"{base}_env") if getattr(self, k) is not None]
            if len(given) > 1:
                raise ValueError(f"give only one of {base}, {base}_file, {base}_env (got {', '.join(given)})")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        return self


class EndpointConfig(Model):
    host: str = Field(min_length=1)
    port: Port | None = None  # default from protocol and tls mode
    tls: TLSModeName = "starttls"
    tls_config: TLSConfig = TLSConfig()
    source_address: str | None = None
    timeout: Duration = 10.0  # per command / read
    username: str | None = None
    # Not stripped like other strings: spaces may be part of a password.
    password: Annotated[str, StringConstraints(strip_whitespace=False)] | None = Field(
        default=None, repr=False
    )
    password_file: str | None = None
    password_env: str | None = None
    allow_plaintext_auth: bool = False
    oauth: OAuthConfig | None = None
    max_sessions: int | None = Field(default=None, ge=1, le=10000)  # this server: default global.max_sessions

    @model_validator(mode="after")
    def _auth(self) -> Self:
        given = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if self.oauth is not None:
            if given:
                raise ValueError(f"oauth: not with {', '.join(given)} (a login is a password or a token)")
            if self.username is None:
                raise ValueError("oauth: needs username (the mailbox the token is for)")
            given = ["oauth"]
        if len(given) > 1:
            raise ValueError(
                f"give only one of password, password_file, password_env (got {', '.join(given)})"
            )
        if given and self.username is None:
            raise ValueError("a password needs a username")
        if self.username is not None and not given:
            raise ValueError("username given without password_file, password_env, password or oauth")
        if self.username is not None and self.tls == "none" and not self.allow_plaintext_auth:
            raise ValueError(
                "credentials over tls: none would travel in clear text; use starttls or implicit, "
                "or set allow_plaintext_auth: true"
            )
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        return self


class SMTPConfig(EndpointConfig):
    helo: str | None = None


class SyncConfig(Model):
    """The multi-device check (IMAP): a second session stays selected; the first sets ``flag`` on our
    verified canary, and the second must see it within ``timeout``."""

    enabled: bool = True
    # \\Seen or a keyword atom (RFC 3501 flag-keyword): a keyword never means anything to a mail client
    flag: str = "$MailcanarySynced"
    timeout: Duration = 30.0

    @field_validator("flag")
    @classmethod
    def _flag(cls, v: str) -> str:
        if v != "\\Seen" and not re.fullmatch(r"[A-Za-z$][A-Za-z0-9$_.-]{0,63}", v):
            raise ValueError(
                "must be \\Seen or a keyword: a letter or $, then letters, digits, $ _ . - (at most 64)"
            )
        return v

    @model_validator(mode="after")
    def _positive(self) -> Self:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        return self


_AUTHSERV_ID_RE = r"(?:\*\.[A-Za-z0-9-]{1,63}\.[A-Za-z0-9.-]{1,250}|[A-Za-z0-9._-]{1,253})"


class ReceiveConfig(EndpointConfig):
    protocol: Literal["imap", "pop3"]
    mailbox: str = "INBOX"  # IMAP only
    idle: bool = True  # IMAP only: use IDLE between polls when the gap is long enough
    # IMAP only: also watch the junk folder (SPECIAL-USE \\Junk, else the first of junk_folders that
    # exists); a canary found there is delivered with placement "junk" and deleted there.
    junk: bool = False
    junk_folders: list[str] = Field(default_factory=lambda: list(DEFAULT_JUNK_FOLDERS), max_length=20)
    # IMAP only: also look in every other folder (the first placement_max_folders of LIST): a canary
    # filed there by a rule is delivered with placement "other" instead of timing out.
    placement_all_folders: bool = False
    placement_max_folders: int = Field(default=20, ge=1, le=MAX_OTHER_FOLDERS)
    # Verdict: Authentication-Results fields are believed only from these authserv-ids (RFC 8601 §5:
    # the receiving side's own border servers); none given, no authentication verdict is exported.
    # "*.example.com": every id ending in .example.com (providers that stamp each MX host's name).
    trusted_authserv_ids: list[
        Annotated[str, WithJsonSchema({"type": "string", "pattern": f"^{_AUTHSERV_ID_RE}$"})]
    ] = Field(default_factory=list, max_length=20)
    # Verdict from a receive side that breaks RFC 8601: microsoft365 trusts Microsoft's id-less field.
    verdict_preset: Preset = "none"
    # Read spam scores (SpamAssassin, rspamd, Microsoft) from the received canary's headers, topmost.
    spam_headers: bool = True
    quota: bool = True  # IMAP only: read the mailbox quota (GETQUOTAROOT) when the server offers QUOTA
    sync: SyncConfig | None = None  # IMAP only: the second-device sync check (off unless given)
    poll_initial: Duration = 0.05
    poll_factor: float | None = Field(default=None, ge=1.0, le=10.0)  # default: 1.25 IMAP, 2 POP3
    poll_max: Duration | None = None  # default: 250ms for IMAP (a look is one NOOP), 1s for POP3 (a session)
    # Read caps (bytes): a server line, a fetched header block, a fetched message (see docs/configuration.md).
    max_line_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_message_bytes: int = Field(default=1024 * 1024, ge=4096, le=256 * 1024 * 1024)

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv_ids(cls, ids: list[str]) -> list[str]:
        for i, item in enumerate(ids):
            if not re.fullmatch(_AUTHSERV_ID_RE, item):
                raise ValueError(
                    f"entry {i}, {item!r}, is not an authserv-id (a host name such as mx.example.com, "
                    "or *.example.com for every name under a domain of at least two labels)"
                )
        return ids

    @property
    def gap_factor(self) -> float:
        return self.poll_factor if self.poll_factor is not None else DEFAULT_POLL_FACTOR[self.protocol]

    @property
    def max_gap(self) -> float:
        if self.poll_max is not None:
            return self.poll_max
        return DEFAULT_POLL_MAX[self.protocol]

    @model_validator(mode="after")
    def _receive(self) -> Self:
        if self.username is None:
            raise ValueError("the receiving side needs username and a password")
        if not 0 < self.poll_initial <= self.max_gap:
            raise ValueError("need 0 < poll_initial <= poll_max")
        if self.protocol == "pop3" and self.sync is not None and self.sync.enabled:
            raise ValueError("sync: an IMAP check (POP3 has no flags for a second session to see)")
        if self.protocol == "pop3" and self.mailbox != "INBOX":
            raise ValueError("mailbox is an IMAP setting; POP3 always reads the inbox")
        if self.protocol == "pop3" and self.junk:
            raise ValueError("junk is an IMAP setting; POP3 sees only the inbox")
        if self.protocol == "pop3" and self.placement_all_folders:
            raise ValueError("placement_all_folders is an IMAP setting; POP3 sees only the inbox")
        return self


class SenderDNSBLConfig(Model):
    """The canary's sending IP as the receiver saw it (the Received chain) against DNSBL zones. Opt-in;
    its own metric, never the round trip's success. Answers are cached per (address, zone)."""

    zones: list[str] = Field(min_length=1, max_length=16)
    resolvers: list[str] = []  # IP literals; empty: /etc/resolv.conf
    resolver_port: Port = 53
    timeout: Duration = 5.0  # per DNS query
    cache_for: Duration = 900.0  # an answer is reused this long (1,000 probes must not ask per run)

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: list[str]) -> list[str]:
        return DomainCheckConfig._zones(v)

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        return DomainCheckConfig._resolvers(v)

    @model_validator(mode="after")
    def _timeout(self) -> Self:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        return self


class RoundTripConfig(Model):
    name: str
    interval: Duration | None = None
    timeout: Duration | None = None
    sender: str = Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    recipient: str = Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    sweep_after: Duration = 3600.0
    lost_after: Duration = 3600.0  # a timed-out canary unseen this long after sending is counted lost
    smtp: SMTPConfig
    receive: ReceiveConfig
    # The sender's mailbox, watched for bounces (IMAP). Without it, bounces are watched in the receive
    # mailbox when sender = recipient (IMAP), else not at all.
    bounce_receive: ReceiveConfig | None = None
    sender_dnsbl: SenderDNSBLConfig | None = None  # the sending IP the receiver saw against DNSBLs

    def sides(self) -> list[tuple[str, EndpointConfig]]:
        """The endpoints that need a password, by side name."""
        out: list[tuple[str, EndpointConfig]] = [("smtp", self.smtp), ("receive", self.receive)]
        if self.bounce_receive is not None:
            out.append(("bounce_receive", self.bounce_receive))
        return out

    @property
    def watches_bounces_here(self) -> bool:
        """Bounces come back to the sender: here, that is the receive mailbox."""
        return (
            self.bounce_receive is None
            and self.receive.protocol == "imap"
            and self.sender.casefold() == self.recipient.casefold()
        )

    @model_validator(mode="after")
    def _bounce_receive(self) -> Self:
        br = self.bounce_receive
        if br is not None and br.protocol != "imap":
            raise ValueError("bounce_receive: bounces are found with IMAP SEARCH; protocol must be imap")
        if br is not None and (br.junk or br.placement_all_folders):
            raise ValueError("bounce_receive: junk and placement_all_folders are receive settings")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not PROBE_NAME_RE.match(v):
            raise ValueError(
                "must be 1-63 characters of letters, digits, '_', '.', '-', starting alphanumeric"
            )
        return v


class TLSCheckConfig(Model):
    """A TLS audit of an endpoint that needs no mailbox: an MX on 25, a submission port, IMAP/POP3."""

    name: str
    host: str = Field(min_length=1)
    port: Port | None = None
    protocol: Literal["smtp", "imap", "pop3", "tcp"]
    tls: Literal["implicit", "starttls"] = "starttls"
    tls_config: TLSConfig = TLSConfig()
    source_address: str | None = None
    interval: Duration | None = None
    timeout: Duration = 10.0
    check_legacy: bool = True
    legacy_recheck: Duration = 86400.0  # legacy TLS answers are tested again after this (or a new cert)
    helo: str | None = None
    max_sessions: int | None = Field(default=None, ge=1, le=10000)  # this server: default global.max_sessions

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return RoundTripConfig._name(v)

    @model_validator(mode="after")
    def _tcp(self) -> Self:
        if self.protocol == "tcp" and self.tls == "starttls":
            raise ValueError("protocol tcp has no STARTTLS; use tls: implicit")
        if self.protocol == "tcp" and self.port is None:
            raise ValueError("port: required for protocol tcp")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        return self


_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9-]{1,63}\.?$"
)
MAX_DOMAIN_ADDRESSES = 64  # max_mx x max_addresses: the series and sessions of one domain, at most


def _domain_name(value: str) -> str:
    if not _DOMAIN_RE.match(value):
        raise ValueError(f"{value!r} is not a DNS name like example.com")
    return value.rstrip(".").lower()


class MustRefuseConfig(Model):
    """Things every MX must refuse, asked on each MX address (the dialogue never reaches DATA)."""

    enabled: bool = False
    relay_sender: str = Field(default="mailcanary-relay-test@example.net", pattern=r"^[^@\s<>]+@[^@\s<>]+$")
    foreign_recipient: str = Field(
        default="mailcanary-relay-test@example.invalid", pattern=r"^[^@\s<>]+@[^@\s<>]+$"
    )
    local_recipient: str | None = Field(default=None, pattern=r"^[^@\s<>]+@[^@\s<>]+$")  # postmaster@<domain>
    # Also ask MAIL FROM on the plain session (refused where TLS is required).
    mail_from_before_tls: bool = False


class DomainCheckConfig(Model):
    """One mail domain from the outside: every MX and address on port 25, DANE, MTA-STS, TLS-RPT, DNSBL,
    certificate hygiene and, when enabled, the must-refuse checks."""

    name: str
    domain: str
    interval: Duration | None = None
    timeout: Duration = 10.0  # per step (DNS query, connect, command, handshake, HTTPS fetch)
    resolvers: list[str] = []  # validating resolvers (IP literals); empty: /etc/resolv.conf
    resolver_port: Port = 53
    port: Port = 25
    max_mx: int = Field(default=10, ge=1, le=MAX_DOMAIN_ADDRESSES)
    max_addresses: int = Field(default=4, ge=1, le=MAX_DOMAIN_ADDRESSES)  # per MX host
    concurrency: int = Field(default=4, ge=1, le=16)  # addresses checked at once
    dnsbl_zones: list[str] = Field(default=[], max_length=16)
    ca_file: str | None = None  # trust store for the MX certificates (default: the system's)
    # One local address, or a list of one IPv4 and/or one IPv6 address: each MX address (and the MTA-STS,
    # OCSP and CRL fetches) is connected from the source of its family, else from the default source.
    source_address: str | list[str] | None = None
    helo: str | None = None
    check_legacy: bool = True
    check_dane: bool = True
    check_mta_sts: bool = True
    mta_sts_port: Port = 443
    mta_sts_ca_file: str | None = None
    check_ocsp: bool = True
    check_crl: bool = False
    must_refuse: MustRefuseConfig = MustRefuseConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return RoundTripConfig._name(v)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return _domain_name(v)

    @field_validator("dnsbl_zones")
    @classmethod
    def _zones(cls, v: list[str]) -> list[str]:
        out = []
        for i, zone in enumerate(v):
            try:
                out.append(_domain_name(zone))
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        if len(set(out)) != len(out):
            raise ValueError("a zone is listed twice")
        return out

    @field_validator("source_address", mode="before")
    @classmethod
    def _source_shape(cls, v: object) -> object:
        if v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v)):
            return v
        raise ValueError("must be an IP address or a list of one IPv4 and one IPv6 address")

    @field_validator("source_address")
    @classmethod
    def _source(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        families: list[int] = []
        for i, item in enumerate(items):
            try:
                families.append(ipaddress.ip_address(item).version)
            except ValueError:
                if isinstance(v, str):
                    raise ValueError(f"{item!r} is not an IP address") from None
                raise ValueError(f"entry {i}, {item!r}, is not an IP address") from None
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; leave the key out for the default source")
        if len(families) != len(set(families)):
            raise ValueError("at most one IPv4 and one IPv6 address")
        return v

    @property
    def source_addresses(self) -> tuple[str, ...]:
        """``source_address`` as a tuple: at most one address per family."""
        v = self.source_address
        return () if v is None else (v,) if isinstance(v, str) else tuple(v)

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            try:
                ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(f"entry {i}, {item!r}, is not an IP address") from None
        if len(v) > 4:
            raise ValueError("at most 4 resolvers")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")
        if self.max_mx * self.max_addresses > MAX_DOMAIN_ADDRESSES:
            raise ValueError(
                f"max_mx x max_addresses is {self.max_mx * self.max_addresses}; at most "
                f"{MAX_DOMAIN_ADDRESSES} MX addresses are checked per domain"
            )
        for key in ("ca_file", "mta_sts_ca_file"):
            path = getattr(self, key)
            if path is not None and not os.access(path, os.R_OK):
                raise ValueError(f"{key}: cannot read {path}")
        return self

    @property
    def steps(self) -> int:
        """Step timeouts one run may take, in the worst case: the run's deadline is this times timeout."""
        rounds = -(-self.max_mx * self.max_addresses // self.concurrency)
        per_address = 8 + (3 * 4 if self.must_refuse.enabled else 0) + len(self.dnsbl_zones) + 3
        return 4 + rounds * per_address


class ModuleConfig(Model):
    """A /probe module: how to audit whatever target the scraper names (blackbox_exporter style)."""

    protocol: Literal["smtp", "imap", "pop3", "tcp"]
    tls: Literal["implicit", "starttls"] = "starttls"
    tls_config: TLSConfig = TLSConfig()
    timeout: Duration = 10.0
    check_legacy: bool = True
    helo: str | None = None


DEFAULT_MODULES: dict[str, ModuleConfig] = {
    f"{proto}_{mode}": ModuleConfig(protocol=proto, tls=mode)
    for proto in ("smtp", "imap", "pop3")
    for mode in ("starttls", "implicit")
} | {"tcp_tls": ModuleConfig(protocol="tcp", tls="implicit")}


_HOST_PATTERN = re.compile(r"^[A-Za-z0-9*?_.-]{1,253}$")


class ProbeEndpointConfig(Model):
    """Who may make /probe connect where: it opens connections to a target the *scraper* names, so it is
    an SSRF and port-scan surface for anyone who reaches the listen port. Restrict it here (and/or with
    --web.config.file basic auth, or by binding --listen to loopback)."""

    enabled: bool = True
    max_concurrent: int = Field(default=16, ge=1, le=1024)  # more at once: 503 with a one-line reason
    allow_targets: list[str] | None = None  # host patterns (fnmatch, "*.example.com") or CIDRs
    allow_modules: list[str] | None = None  # module names; None: every module

    @field_validator("allow_targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        for i, item in enumerate(v or []):
            if "/" in item:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"entry {i}, {item!r}, is not a CIDR like 192.0.2.0/24") from None
            elif not _HOST_PATTERN.match(item):
                raise ValueError(
                    f"entry {i}, {item!r}, is neither a host pattern (letters, digits, '.', '-', '*', '?') "
                    "nor a CIDR"
                )
        return v

    def target_allowed(self, host: str) -> bool:
        """An IP literal must be in a listed CIDR (or listed literally); a name must match a pattern.

        Names are not resolved here: a CIDR never admits a name (DNS could point it anywhere)."""
        if self.allow_targets is None:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        for item in self.allow_targets:
            if "/" in item:
                if address is not None and address in ipaddress.ip_network(item, strict=False):
                    return True
            elif fnmatch.fnmatchcase(host.lower().rstrip("."), item.lower().rstrip(".")):
                return True
        return False

    def module_allowed(self, name: str) -> bool:
        return self.allow_modules is None or name in self.allow_modules


class GlobalConfig(Model):
    interval: Duration = 300.0
    timeout: Duration = 120.0
    state_dir: str | None = None  # default: $STATE_DIRECTORY (systemd) or ~/.local/state/mailcanary
    canary_key_file: str | None = None
    shard: str | None = Field(default=None, pattern=r"^\d+/\d+$")  # "i/N": run only this share of probes
    vantage: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,63}$")  # label on every series
    # Sessions at once per server (host:port) and per login service (host + protocol): well under the
    # 100 login processes of a stock Dovecot and the 100 smtpd of a stock Postfix.
    max_sessions: int = Field(default=50, ge=1, le=10000)
    queue_timeout: Duration = 30.0  # a run that gets no session slot within this fails: queue_timeout
    # Certificate hygiene of round trips and TLS checks: ask the OCSP responder their certificates name.
    check_ocsp: bool = True
    ocsp_timeout: Duration = 10.0
    check_crl: bool = False  # also fetch the CRL a certificate names (HTTP, up to 4 MB, cached)

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str | None) -> str | None:
        if v is not None:
            parse_shard(v)
        return v

    @field_validator("queue_timeout")
    @classmethod
    def _queue_timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` with 0 <= i < N; raises ValueError with a one-line reason."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m is None:
        raise ValueError(f"shard {text!r}: expected i/N, e.g. 0/2")
    index, count = int(m[1]), int(m[2])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < N")
    return index, count


def in_shard(name: str, shard: tuple[int, int] | None) -> bool:
    """Stable across restarts, machines and Python versions (not ``hash()``, which is salted)."""
    if shard is None:
        return True
    index, count = shard
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count == index


class Config(Model):
    global_: GlobalConfig = Field(default=GlobalConfig(), alias="global")
    roundtrip: list[RoundTripConfig] = []
    tls_checks: list[TLSCheckConfig] = []
    domain_checks: list[DomainCheckConfig] = []
    modules: dict[str, ModuleConfig] = {}  # /probe modules; the built-in defaults are always there too
    probe_endpoint: ProbeEndpointConfig = ProbeEndpointConfig()  # who may use /probe, and how much

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        named: list[tuple[str, RoundTripConfig | TLSCheckConfig | DomainCheckConfig]] = [
            *((f"roundtrip[{i}]", p) for i, p in enumerate(self.roundtrip)),
            *((f"tls_checks[{i}]", c) for i, c in enumerate(self.tls_checks)),
            *((f"domain_checks[{i}]", d) for i, d in enumerate(self.domain_checks)),
        ]
        for where, item in named:
            if item.name in seen:
                raise ValueError(f"{where}.name: duplicate probe name {item.name!r}")
            seen.add(item.name)
        for name in self.modules:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
                raise ValueError(f"modules.{name}: module names are 1-63 of letters, digits, '_', '.', '-'")
        for i, name in enumerate(self.probe_endpoint.allow_modules or []):
            if name not in self.all_modules():
                raise ValueError(f"probe_endpoint.allow_modules[{i}]: no module named {name!r}")
        for i, probe in enumerate(self.roundtrip):
            interval, timeout = self.interval_of(probe), self.timeout_of(probe)
            if interval < 1:
                raise ValueError(f"roundtrip[{i}].interval: must be at least 1s")
            if timeout <= 0:
                raise ValueError(f"roundtrip[{i}].timeout: must be > 0")
            rc = probe.receive
            sync = rc.sync is not None and rc.sync.enabled
            needed = 1 + int(rc.junk) + int(rc.placement_all_folders) + int(sync)  # sessions a run opens
            limit = rc.max_sessions if rc.max_sessions is not None else self.global_.max_sessions
            if limit < needed:
                raise ValueError(
                    f"roundtrip[{i}].receive.max_sessions: {limit} is fewer than the {needed} sessions a run "
                    "opens with junk/placement_all_folders/sync (it would always end in queue_timeout)"
                )
        return self

    def all_modules(self) -> dict[str, ModuleConfig]:
        return DEFAULT_MODULES | dict(self.modules)

    def interval_of(self, probe: RoundTripConfig | TLSCheckConfig | DomainCheckConfig) -> float:
        return probe.interval if probe.interval is not None else self.global_.interval

    def timeout_of(self, probe: RoundTripConfig) -> float:
        return probe.timeout if probe.timeout is not None else self.global_.timeout


class ConfigError(Exception):
    """One or more problems, each a line ``file: key.path: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = "global" if part == "global_" else part
            out += f".{part}" if out else part
    return out or "(top level)"


def _message(err: Any) -> str:
    kind, msg = str(err["type"]), str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping (key: value)"
    if kind == "list_type":
        return "must be a list"
    if kind == "string_pattern_mismatch":
        if "@" in str(err.get("ctx", {}).get("pattern", "")):
            return "must be a mail address like user@example.com"
        return f"must match {err.get('ctx', {}).get('pattern', 'the expected form')}"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be")
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    return msg


def _problems(path: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        msg = _message(err)
        # Errors raised by a model validator carry their own key path ("roundtrip[1].name: ...").
        m = re.match(r"^((?:[A-Za-z_]+(?:\[\d+\])?\.?)+): (.*)$", msg)
        if m and m.group(1).startswith(
            ("roundtrip", "global", "tls_checks", "domain_checks", "modules", "probe_endpoint")
        ):
            lines.append(f"{path}: {m.group(1)}: {m.group(2)}")
            continue
        if err["type"] == "value_error" and ": " in msg and msg.split(": ", 1)[0].isidentifier():
            key, msg = msg.split(": ", 1)
            loc.append(key)
        lines.append(f"{path}: {_loc(loc)}: {msg}")
    return lines


MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config is kilobytes; anything near this is a mistake or an attack
MAX_YAML_NODES = 1_000_000  # values after alias expansion: a "billion laughs" file is refused, not expanded


class _Strict:
    """Safe YAML where a key given twice in one mapping is an error naming its line (the last one would
    silently win otherwise)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the constructor below reports it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {first + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        result: dict[Any, Any] = super().construct_mapping(node, deep=deep)  # type: ignore[misc]
        return result


class _StrictLoader(_Strict, yaml.SafeLoader):
    """Pure Python: its error messages are the ones we show."""


_FastLoader: Any = (
    type("_FastLoader", (_Strict, yaml.CSafeLoader), {}) if hasattr(yaml, "CSafeLoader") else _StrictLoader
)  # libyaml's parser (~3x faster); a file it refuses is parsed again by _StrictLoader for the message


def _expanded_size(data: Any, limit: int) -> int:
    """How many values ``data`` holds with every alias expanded (memoised by identity: linear time)."""
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        if not isinstance(obj, dict | list):
            return 1
        known = sizes.get(id(obj))
        if known is not None:
            return known
        sizes[id(obj)] = limit + 1  # a cycle (recursive alias) counts as too big
        children = obj.values() if isinstance(obj, dict) else obj
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(obj)] = total
        return total

    return size(data)


_gc_lock = threading.Lock()
_gc_pausers = 0  # parses under way (config files may be parsed on several threads at once)
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a file is parsed (process-wide, nesting-safe).

    Parsing builds hundreds of thousands of objects, and the full collections that this triggers hold
    the GIL for a second or more at a time (measured on a 2 MiB file: scrapes went unanswered for 1.2 s;
    with the collector paused the longest stall was 0.14 s, and the parse was 3x faster). A reload runs
    on a worker thread and must not freeze the event loop's scrapes; parsed YAML holds no reference
    cycles, so nothing is lost by collecting afterwards.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


def load_yaml(text: str, path: str) -> Any:
    """Strict safe YAML (duplicate keys are errors, aliases bounded); problems as one line each."""
    try:
        with _gc_paused():
            try:
                data = yaml.load(text, Loader=_FastLoader)  # SafeLoader subclasses: safe
            except yaml.YAMLError:
                data = yaml.load(text, Loader=_StrictLoader)  # raises again, with PyYAML's clearer message
    except RecursionError:
        raise ConfigError([f"{path}: (top level): invalid YAML: nested too deeply"]) from None
    except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError for e.g. a bad date
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(top level)"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{path}: {where}: invalid YAML: {problem}"]) from None
    try:
        too_big = _expanded_size(data, MAX_YAML_NODES) > MAX_YAML_NODES
    except RecursionError:
        too_big = True
    if too_big:
        raise ConfigError(
            [f"{path}: (top level): more than {MAX_YAML_NODES} values once aliases are expanded"]
        )
    return data


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
    data = {k: v for k, v in data.items() if not (v is None and k in _SECTIONS)}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        # Structure first, but also what can be told from the raw data, so one run lists it all.
        found = _problems(path, exc) + _raw_problems(path, data, environ)
        raise ConfigError(list(dict.fromkeys(found))) from None
    loaded = LoadedConfig(path=path, config=config)
    loaded.notes += source_notes(config, path)
    problems: list[str] = []
    for i, probe in enumerate(config.roundtrip):
        for side, ep in probe.sides():
            where = f"roundtrip[{i}].{side}"
            secret, problem = _read_secret(
                path, where, ep.password, ep.password_file, ep.password_env, environ
            )
            if problem is not None:
                problems.append(problem)
            if secret is not None:
                loaded.secrets[(probe.name, side)] = secret
            if ep.oauth is not None:
                for base in ("client_secret", "refresh_token"):
                    value, problem = _read_secret(
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
    public = json.dumps(_without_passwords(config.model_dump(mode="json")), sort_keys=True)
    loaded.digest = hashlib.sha256(public.encode()).hexdigest()[:12]
    return loaded


def _without_passwords(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_passwords(v)
            for k, v in value.items()
            if k not in ("password", "client_secret", "refresh_token")
        }
    if isinstance(value, list):
        return [_without_passwords(v) for v in value]
    return value


def _read_secret(
    path: str,
    where: str,
    password: object,
    password_file: object,
    password_env: object,
    environ: dict[str, str],
    key: str = "password",
) -> tuple[str | None, str | None]:
    """(secret, problem) for one endpoint's password_file / password_env / inline password (or another
    secret ``key`` with the same three forms)."""
    if isinstance(password, str):
        return password, None
    if isinstance(password_file, str):
        try:
            secret = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            detail = getattr(exc, "strerror", None) or exc
            return None, f"{path}: {where}.{key}_file: cannot read {password_file}: {detail}"
        if not secret:
            return None, f"{path}: {where}.{key}_file: {password_file} is empty"
        return secret, None
    if isinstance(password_env, str):
        secret = environ.get(password_env, "")
        if not secret:
            return (
                None,
                f"{path}: {where}.{key}_env: environment variable {password_env} is not set or empty",
            )
        return secret, None
    return None, None


def _raw_problems(path: str, data: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """Secrets and duplicate names checked on the raw YAML, for when the structure did not validate."""
    problems: list[str] = []
    seen: set[str] = set()
    for section in ("roundtrip", "tls_checks", "domain_checks"):
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            if isinstance(name, str):
                if name in seen:
                    problems.append(f"{path}: {section}[{i}].name: duplicate probe name {name!r}")
                seen.add(name)
            for side in ("smtp", "receive", "bounce_receive") if section == "roundtrip" else ():
                ep = item.get(side)
                if isinstance(ep, dict):
                    _, problem = _read_secret(
                        path,
                        f"{section}[{i}].{side}",
                        ep.get("password"),
                        ep.get("password_file"),
                        ep.get("password_env"),
                        environ,
                    )
                    if problem is not None:
                        problems.append(problem)
    return problems


def read_text_capped(path: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, refused (one line, without reading on) when it is bigger than ``limit`` bytes."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
        if len(raw) > limit:
            raise ConfigError(
                [f"{path}: (file): bigger than {limit // (1024 * 1024)} MiB ({limit} bytes); not a config?"]
            )
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: (file): not found"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: (file): not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: (file): cannot read: {exc.strerror or exc}"]) from None


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


def default_port(protocol: str, tls: str) -> int:
    return _DEFAULT_PORTS[(protocol, tls)]


def state_dir(config: Config, environ: dict[str, str] | None = None) -> Path:
    environ = dict(os.environ) if environ is None else environ
    if config.global_.state_dir:
        return Path(config.global_.state_dir)
    if environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(environ["STATE_DIRECTORY"].split(":")[0])
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "mailcanary"
