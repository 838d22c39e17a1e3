"""The root of the project's own errors.

Every error this package raises on purpose derives from `P2PResearchError` (and, where callers
already relied on it, from the built-in it was before: a `ConstantsError` is still a `ValueError`), so
one `except P2PResearchError` at a fault boundary or in the CLI tells the project's refusals from a
bug. The two scripts that run inside sandboxes (harness/handover.py, harness/evaluate.py) import
nothing of the package and keep their own.
"""

from __future__ import annotations


class P2PResearchError(Exception):
    """An error of this project's own making: a refusal with a reason, never a bug."""
