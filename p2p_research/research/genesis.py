"""Who measures the genesis baseline first, and which value of it peers agree on (pure, no I/O).

Every node used to measure the genesis before its first experiment: with runs of one budget each, the
swarm's first results came two runs after the start, and the whole swarm spent its first run measuring
one number. Now a node that has peers measures it first only if its ticket (a hash of its peer id and
the genesis commit) falls below `MEASURER_SHARE`; the others start an experiment at once and judge it
against the value the measurers announce (`research/loop.py`: such a value only ever keeps).

A node cannot choose another's ticket, and a lie about the genesis value is bounded by the loop's rule
(docs/security.md); `agreed_value` still asks for `AGREEING` distinct peers (keys) within `agree_tol`,
so that a single key cannot even make a node keep a result it should not.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

MEASURER_SHARE = 0.25   # about a quarter of a fresh swarm measures the genesis (35 nodes: ~9)
AGREEING = 2            # distinct peers whose measurements must agree
AWAIT_SHARE = 0.5       # after its first run, a node waits this share of the run's time for their value
AGREE_MARGINS = 4.0     # measurements agree within this many keep margins (see `agree_tol`)
AWAIT_MIN_S, AWAIT_MAX_S = 2.0, 60.0


def ticket(peer_id: str, commit: str) -> float:
    """A number in [0, 1) fixed by the peer id and the commit: nobody picks another node's share."""
    digest = hashlib.sha256(f"genesis:{commit}:{peer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def measures_first(peer_id: str, commit: str, shares: bool, share: float = MEASURER_SHARE) -> bool:
    """Whether this node measures the genesis before experimenting. One that cannot leave it to peers
    (`shares` false: alone, not hearing their measurements, or configured so) must; in a swarm, about
    `share` of the nodes do (and any node measures it later if no agreed value comes)."""
    return not shares or ticket(peer_id, commit) < share


def agree_tol(margin: float) -> float:
    """How far two peers' measurements of the genesis may differ and still agree. Each measured with its
    own seed, so they differ by the run-to-run noise of two runs (about 2 x 1.4 sigma, with the margin
    at 2 sigma); measured on the 35-node surrogate swarm, the genesis ranged over 0.007. A wider group
    only ever costs a node a keep (the lowest value is taken), never an honest discard."""
    return AGREE_MARGINS * margin


def agreed_value(values: Mapping[str, float], tol: float, quorum: int = AGREEING) -> float | None:
    """The lowest value (the hardest to beat) of the lowest group of at least `quorum` distinct peers'
    measurements that lie within `tol` of each other; None when no such group exists yet."""
    vs = sorted(v for v in values.values() if isinstance(v, float) and math.isfinite(v) and v > 0)
    j = 0
    for i, v in enumerate(vs):
        j = max(j, i)
        while j + 1 < len(vs) and vs[j + 1] - v <= tol:
            j += 1
        if j - i + 1 >= quorum:
            return v
    return None


def await_s(run_seconds: float | None) -> float:
    """How long a node waits for the measurers' value after its first run before measuring itself: they
    started about when it did (nodes of a fresh swarm start over tens of seconds), so their values are
    due around the end of its run; waiting half a run costs less than the run measuring would."""
    if run_seconds is None or not math.isfinite(run_seconds) or run_seconds <= 0:
        return AWAIT_MIN_S
    return min(AWAIT_MAX_S, max(AWAIT_MIN_S, AWAIT_SHARE * run_seconds))


def still_waiting(value: float | None, now: float, deadline: float, researchers: int) -> bool:
    """Whether a node that asked its peers for the genesis value waits on (the daemon's engine and the
    DES's virtual node both ask this): not once a value is agreed or the wait is over, and not at all
    while fewer than AGREEING other researchers of the protocol are heard (the rule cannot be met)."""
    return value is None and now < deadline and researchers >= AGREEING
