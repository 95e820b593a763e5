"""Secrets of the config (passwords, OAuth client secrets and refresh tokens): read from the file, the
environment variable or the inline value at load time, so a missing secret is a config error at start or
reload, not a probe failure an hour later; and kept out of the config digest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter import registry


def without_passwords(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: without_passwords(v)
            for k, v in value.items()
            if k not in ("password", "client_secret", "refresh_token")
        }
    if isinstance(value, list):
        return [without_passwords(v) for v in value]
    return value


def read_secret(
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


def raw_problems(path: str, data: dict[str, Any], environ: dict[str, str]) -> list[str]:
    """Secrets and duplicate names checked on the raw YAML, for when the structure did not validate."""
    problems: list[str] = []
    seen: set[str] = set()
    for kind in registry.kinds():
        section = kind.section
        items = data.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict):
                continue
            name = item.get("name")
            if isinstance(name, str):
                if name in seen:
                    problems.append(f"{path}: {section}[{i}].name: duplicate probe name {name!r}")
                seen.add(name)
            for side in kind.secret_sides:
                ep = item.get(side)
                if isinstance(ep, dict):
                    _, problem = read_secret(
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
