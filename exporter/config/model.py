"""The configuration's models: frozen pydantic, unknown keys refused, constrained types (ports,
durations), cross-field checks in validators. Loading a file is :mod:`exporter.config.loader`.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from exporter import registry
from exporter.config.durations import parse_duration
from exporter.config.shard import parse_shard
from probes.canary import PROBE_NAME_RE
from probes.receipt.placement import DEFAULT_JUNK_FOLDERS, MAX_OTHER_FOLDERS
from probes.receipt.verdict import Preset
from probes.roundtrip import DEFAULT_POLL_FACTOR, DEFAULT_POLL_INITIAL, DEFAULT_POLL_MAX
from probes.tls.scanning import SCAN_STEPS

DEFAULT_CONFIG_PATH = "/etc/mailcanary/mailcanary.yml"


def _duration(value: object) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
# How long a TLS scan is reused: a scan is a dozen connections, and mail servers rate-limit them.
ScanRecheck = Annotated[float, BeforeValidator(_duration), Field(ge=60)]
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
    """Unknown keys are errors: a typo must not silently fall back to a default. ``defer_build``: a model
    builds its own validator when first used on its own; one only ever validated inside the root
    (:func:`config_model`), i.e. most of them, never builds a second copy (idle memory, issue 23)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, defer_build=True)


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
    # The TLS scan of this side (probes.tls.scan): after the run, outside its time, once per scan_recheck.
    scan: bool = True
    scan_recheck: ScanRecheck = 86400.0

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
    poll_initial: Duration | None = None  # default: 5ms for IMAP (a look is one NOOP), 50ms for POP3
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
    def first_gap(self) -> float:
        if self.poll_initial is not None:
            return self.poll_initial
        return DEFAULT_POLL_INITIAL[self.protocol]

    @property
    def max_gap(self) -> float:
        if self.poll_max is not None:
            return self.poll_max
        return DEFAULT_POLL_MAX[self.protocol]

    @model_validator(mode="after")
    def _receive(self) -> Self:
        if self.username is None:
            raise ValueError("the receiving side needs username and a password")
        if not 0 < self.first_gap <= self.max_gap:
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
    scan: bool = True  # the TLS scan (protocols, weak classes, FS, chain, stapling): a dozen hellos
    scan_recheck: ScanRecheck = 86400.0  # scanned again after this (or a new certificate)
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
    scan: bool = True  # the TLS scan of every MX address (a dozen hellos each, once per scan_recheck)
    scan_recheck: ScanRecheck = 86400.0
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
        # 9: the TLS audit (connect, dialogue, verified + permissive + unverified handshakes, two legacy
        # ones), the chain, MAIL FROM before TLS
        per_address = 9 + (3 * 4 if self.must_refuse.enabled else 0) + len(self.dnsbl_zones) + 3
        per_address += SCAN_STEPS if self.scan else 0  # the TLS scan's own time bound
        return 4 + rounds * per_address


class ModuleConfig(Model):
    """A /probe module: how to audit whatever target the scraper names (blackbox_exporter style)."""

    protocol: Literal["smtp", "imap", "pop3", "tcp"]
    tls: Literal["implicit", "starttls"] = "starttls"
    tls_config: TLSConfig = TLSConfig()
    timeout: Duration = 10.0
    check_legacy: bool = True
    legacy_recheck: Duration = 86400.0  # legacy answers remembered per target this long (0: never)
    scan: bool = False  # opt in: the TLS scan of the target (a dozen hellos; remembered per target)
    scan_recheck: ScanRecheck = 86400.0
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


class Config(Model):
    """The root of the file. Its probe sections (one list of entries per kind) come from the registry of
    kinds (:mod:`exporter.registry`): :func:`config_model` builds the class that validates a file, with
    ``global`` first, then each kind's section in registry order, then ``modules`` and ``probe_endpoint``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    if TYPE_CHECKING:  # set by config_model(); a kind's section is read through registry.Kind.entries
        global_: GlobalConfig
        modules: dict[str, ModuleConfig]
        probe_endpoint: ProbeEndpointConfig

        def __getattr__(self, name: str) -> Any: ...

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        kinds = registry.kinds()
        for kind in kinds:
            for i, item in enumerate(kind.entries(self)):
                if item.name in seen:
                    raise ValueError(f"{kind.section}[{i}].name: duplicate probe name {item.name!r}")
                seen.add(item.name)
        for name in self.modules:
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", name):
                raise ValueError(f"modules.{name}: module names are 1-63 of letters, digits, '_', '.', '-'")
        for i, name in enumerate(self.probe_endpoint.allow_modules or []):
            if name not in self.all_modules():
                raise ValueError(f"probe_endpoint.allow_modules[{i}]: no module named {name!r}")
        for kind in kinds:
            if kind.check is not None:
                for i, item in enumerate(kind.entries(self)):
                    kind.check(self, item, f"{kind.section}[{i}]")
        return self

    def all_modules(self) -> dict[str, ModuleConfig]:
        return DEFAULT_MODULES | dict(self.modules)

    def interval_of(self, entry: Any) -> float:
        """An entry's interval, or the global one."""
        interval: float | None = entry.interval
        return interval if interval is not None else self.global_.interval

    def timeout_of(self, entry: Any) -> float:
        """An entry's timeout, or the global one (kinds whose timeout is optional)."""
        timeout: float | None = entry.timeout
        return timeout if timeout is not None else self.global_.timeout


_built: tuple[int, type[Config]] | None = None


def config_model() -> type[Config]:
    """The root model for the kinds registered now (rebuilt when the registry changes)."""
    global _built
    if _built is not None and _built[0] == registry.version():
        return _built[1]
    fields: dict[str, Any] = {"global_": (GlobalConfig, Field(default=GlobalConfig(), alias="global"))}
    for kind in registry.kinds():
        fields[kind.section] = (list[kind.model], [])  # type: ignore[name-defined]
    fields["modules"] = (dict[str, ModuleConfig], {})  # /probe modules; the built-in defaults are there too
    fields["probe_endpoint"] = (ProbeEndpointConfig, ProbeEndpointConfig())  # who may use /probe
    model = create_model("Config", __base__=Config, __module__=__name__, **fields)
    _built = (registry.version(), model)
    return model


def sections() -> tuple[str, ...]:
    """Every top-level key of the file."""
    return ("global", *(k.section for k in registry.kinds()), "modules", "probe_endpoint")


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


# --- reports (issue 22): the domain's TLS-RPT and DMARC aggregate reports, read from their rua mailbox --


class ReportsMailboxConfig(EndpointConfig):
    """The IMAP mailbox where ``rua`` reports arrive: the endpoint keys of a round trip's receive side
    (password, password_file, password_env or oauth), IMAP only."""

    max_line_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # A mail bigger than this is not read (counted: reports_errors_total{kind="unknown",reason="too_large"}).
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=4096, le=256 * 1024 * 1024)

    @model_validator(mode="after")
    def _login(self) -> Self:
        if self.username is None:
            raise ValueError("the reports mailbox needs username and a password (or oauth)")
        return self


_FOLDER_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,255}$")


class ReportsConfig(Model):
    """One rua mailbox: which folders, which report kinds, our domains, the senders we know, and the caps
    that keep hostile attachments bounded (see docs/inbound.md)."""

    name: str
    interval: Duration | None = None
    timeout: Duration | None = None
    imap: ReportsMailboxConfig
    folders: list[Annotated[str, Field(pattern=_FOLDER_RE.pattern)]] = Field(
        default_factory=lambda: ["INBOX"], min_length=1, max_length=20
    )
    kinds: list[Literal["tlsrpt", "dmarc"]] = Field(default=["tlsrpt", "dmarc"], min_length=1, max_length=2)
    domains: list[str] = Field(min_length=1, max_length=50)  # our domains; others are counted as `other`
    # DMARC source IPs by name: the sender's label; every other IP is `unknown` (never a label of its own).
    senders: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")], list[str]] = Field(
        default_factory=dict, max_length=50
    )
    mx_hosts: list[str] = Field(default=[], max_length=20)  # receiving MX names that become `mx` labels
    max_age: Duration = 14 * 86400.0  # reports whose range ended before this are skipped (too_old)
    max_orgs: int = Field(default=50, ge=1, le=500)  # org labels per kind; later orgs are `other`
    max_messages: int = Field(default=500, ge=1, le=100_000)  # mails read per run; the rest next run
    max_attachment_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_decompressed_bytes: int = Field(default=20 * 1024 * 1024, ge=4096, le=1024 * 1024 * 1024)
    max_ratio: int = Field(default=100, ge=2, le=10_000)
    max_records: int = Field(default=10_000, ge=1, le=1_000_000)
    unknown_threshold: int = Field(default=100, ge=0)  # MailcanaryDMARCUnknownSenders fires above it
    top_unknown: int = Field(default=10, ge=0, le=100)  # unknown sources named in the log and status page
    move_to: str | None = Field(default=None, pattern=_FOLDER_RE.pattern)  # read reports go there (UID MOVE)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return RoundTripConfig._name(v)

    @field_validator("domains", "mx_hosts")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = []
        for i, item in enumerate(v):
            try:
                out.append(_domain_name(item))
            except ValueError as exc:
                raise ValueError(f"entry {i}: {exc}") from None
        if len(set(out)) != len(out):
            raise ValueError("a name is listed twice")
        return out

    @field_validator("senders")
    @classmethod
    def _senders(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, cidrs in v.items():
            if name == "unknown":
                raise ValueError("'unknown' is the label of every source no sender covers; pick another name")
            if not cidrs or len(cidrs) > 256:
                raise ValueError(f"{name}: give 1 to 256 CIDRs")
            for i, item in enumerate(cidrs):
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(f"{name}[{i}]: {item!r} is not a CIDR like 192.0.2.0/24") from None
        return v

    @model_validator(mode="after")
    def _reports(self) -> Self:
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError("kinds: a kind is listed twice")
        if len(set(self.folders)) != len(self.folders):
            raise ValueError("folders: a folder is listed twice")
        if self.move_to is not None and self.move_to in self.folders:
            raise ValueError("move_to: must not be one of the folders read")
        if self.max_age <= 0:
            raise ValueError("max_age: must be > 0")
        return self
