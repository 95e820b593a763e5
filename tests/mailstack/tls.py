"""Throwaway test PKI (trustme) written as the PEM files that Postfix and Dovecot read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_NAME = "mail.example.test"
SERVER_IDENTITIES = ("localhost", SERVER_NAME, "127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSFiles:
    """PEM paths for one server: ``chain`` is leaf first then intermediates; ``ca`` is what clients trust."""

    chain: Path
    key: Path
    ca: Path


def write_ca(directory: Path, name: str = "ca") -> trustme.CA:
    """Create a CA and write ``<name>.pem`` (certificate) and ``<name>.key`` (0600) into ``directory``.

    The key is kept so that later tests can issue more leaves (expired, wrong host) under the same CA.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mailcanary test CA")
    ca.cert_pem.write_to_path(str(directory / f"{name}.pem"))
    key = directory / f"{name}.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    ca.private_key_pem.write_to_path(str(key))
    return ca


def write_leaf(
    ca: trustme.CA,
    directory: Path,
    name: str = "server",
    *,
    identities: tuple[str, ...] = SERVER_IDENTITIES,
    common_name: str | None = SERVER_NAME,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca_file: Path | None = None,
) -> TLSFiles:
    """Issue a server certificate from ``ca`` and write ``<name>.pem`` (chain) + ``<name>.key`` (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*identities, common_name=common_name, not_before=not_before, not_after=not_after)
    chain = directory / f"{name}.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    chain.chmod(0o644)
    key = directory / f"{name}.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    leaf.private_key_pem.write_to_path(str(key))
    return TLSFiles(chain=chain, key=key, ca=ca_file or directory / "ca.pem")
