"""The one version gate for everything that patches or reaches into py-libp2p's internals.

`net/rpc_cost.py` (RPC cost patches) and `net/upstream_guards.py` (guards for upstream faults) replace
or wrap private functions of libp2p; each applies only on the version it was written against, which
is the pin in pyproject.toml (a test holds the two equal). docs/libp2p.md says what each works around.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

EXPECTED_LIBP2P = "0.8.1"


def libp2p_version() -> str | None:
    """The installed libp2p's version (None when it is not installed)."""
    try:
        return _dist_version("libp2p")
    except PackageNotFoundError:
        return None


def is_expected_libp2p() -> bool:
    """Whether the installed libp2p is the one the patches and guards were written against."""
    return libp2p_version() == EXPECTED_LIBP2P
