"""Lazy package faces (PEP 562), so that importing one module of a package loads only that module.

A package's ``__init__`` is its face: it names what the package offers. Written as plain imports, it
loads every module of the package whenever any one of them is imported (``probes.wire.net`` pulled in
dnspython, aiohttp and cryptography through ``probes.wire.dns`` and ``probes.wire.certs``), and a daemon
that runs one round trip carried the domain checks, the TLS scan tables and the report parsers (issue 23,
idle memory). A lazy face keeps the same names: under ``if TYPE_CHECKING:`` the imports as before (what
mypy and readers see), and at run time ``__getattr__`` from :func:`face`, which imports a module the
first time one of its names is asked for. ``tests/test_idle_imports.py``
(``test_lazy_faces_offer_what_mypy_sees``) checks that both agree.

:func:`module` does the same for a module used as a namespace (``h.client_hello``, the TLS scan's tables).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any


def face(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``'s ``__init__``. ``exports`` maps each of its modules
    (relative: ``"dns"`` for ``probes.wire.dns``) to the names the face offers from it, separated by
    blanks; ``FACE=OWN`` offers the module's ``OWN`` as ``FACE``."""
    where: dict[str, tuple[str, str]] = {}
    for module, names in exports.items():
        for export in names.split():
            public, _, own = export.partition("=")
            where[public] = (f"{package}.{module}", own or public)
    # A name that is also one of the package's modules (``probes.tls.scan``'s function ``scan``): importing
    # that module sets the package's attribute to the module, so the name is bound now, as a plain
    # import would bind it, and not left to ``__getattr__`` (never asked once the attribute exists).
    for public, (module, own) in where.items():
        if module == f"{package}.{public}":
            setattr(sys.modules[package], public, getattr(importlib.import_module(module), own))

    def __getattr__(name: str) -> Any:
        found = where.get(name)
        if found is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(found[0]), found[1])
        setattr(sys.modules[package], name, value)  # once: the next lookup finds it directly
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    __getattr__.exports = where  # type: ignore[attr-defined]  # read by tests/test_idle_imports.py
    return __getattr__, __dir__


def module(name: str) -> ModuleType:
    """``name``, loaded when one of its attributes is first read (:class:`importlib.util.LazyLoader`): for
    ``h = module("probes.tls.hello")`` under ``if not TYPE_CHECKING`` beside the plain import for mypy. Used
    from the event loop's thread only (LazyLoader is not thread-safe before Python 3.12)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    found = importlib.util.module_from_spec(spec)
    sys.modules[name] = found
    spec.loader.exec_module(found)
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, found)
    return found
