"""What a benchmark needs to run the interop servers outside pytest (bench/detection.py): the install
root, a fresh reapable temp root, and the reaping of roots whose owner died."""

from tests.interop._common import INSTALL_HINT, INTEROP_ROOT, make_interop_root, reap_interop_orphans

__all__ = ["INSTALL_HINT", "INTEROP_ROOT", "make_interop_root", "reap_interop_orphans"]
