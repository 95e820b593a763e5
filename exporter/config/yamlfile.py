"""The strict YAML reader under every config file (the main config and the web config): size-capped,
duplicate keys refused with their line, aliases bounded, the garbage collector paused while parsing."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any

import yaml

from exporter.config.errors import ConfigError

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
