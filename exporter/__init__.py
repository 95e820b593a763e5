"""The mailcanary daemon: configuration, scheduling, metrics, HTTP and the command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailcanary")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# The built-in probe kinds register themselves in exporter.registry (the only list of kinds) whatever
# module of the daemon is imported first: the config's root model and the runner read that registry.
import exporter.kinds  # noqa: F401
