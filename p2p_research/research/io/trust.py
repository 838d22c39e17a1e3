"""The trust policy: what a peer's change may be before this node runs or adopts it.

Code from a peer is code execution, and it is also a claim about its own number: a train.py prints its
val_bpb, so code that may run may also lie about what it measured. The sandbox (`research/io/sandbox.py`)
bounds what the code can touch, not what it claims. So under policy `sandboxed` (the default where a
sandbox works) a change of train.py by a peer not in `trust.trusted_peers` may be verified and adopted
only where this node's harness measures every run itself from a handed-over model (`harness/`), never
from what the run prints; where it cannot, such a change is held to constants, as under `constants`
(the fallback without a sandbox): a commit may alter nothing but the values of the top-level
constants of train.py compared with its parent. Peers listed in `trust.trusted_peers` (or every peer
under policy `any`) may change train.py freely. Whatever the policy, only train.py may
change: a change of the harness (prepare.py) or any other file is never an experiment, whoever sends
it. Adopting a commit adopts its whole lineage, so every step from an already accepted commit is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2p_research.research.constants import constants_only_change
from p2p_research.research.io.workspace import Workspace, WorkspaceError

EDITABLE = "train.py"
REGULAR_FILE = 0o100644  # the only mode in a target's tree (Workspace.create writes flat regular files)
MAX_LINEAGE = 10_000


@dataclass(frozen=True)
class TrustPolicy:
    policy: str = "constants"                 # sandboxed | constants | any (the policy in force)
    trusted_peers: frozenset[str] = frozenset()
    harness_measures: bool = False            # this node measures every run itself (harness/measure.py)
    private_split: bool = False               # ... and on windows no run can have read (a split of its own)

    def trusts_code_from(self, peer: str) -> bool:
        if self.policy == "any" or peer in self.trusted_peers:
            return True
        return self.policy == "sandboxed" and self.harness_measures and self.private_split

    def peers_code(self) -> str:
        """What a change of train.py by an untrusted peer may be here, in words (status, doctor)."""
        if self.policy == "any":
            return "any change (trust.policy = any)"
        if self.policy == "sandboxed" and self.harness_measures and self.private_split:
            return "any change: it runs in the sandbox and this node's harness measures its model"
        if self.policy == "sandboxed" and self.harness_measures:
            return ("constants only: this node's harness measures every run, but this target's data has no "
                    "split the runs cannot read, so a model fitted to the validation windows would pass")
        if self.policy == "sandboxed":
            return ("constants only: this node's harness cannot measure a run's model here, and a run's "
                    "own val_bpb is only its claim")
        return "constants only (trust.policy = constants)"


def check_change(old_files: dict[str, bytes], new_files: dict[str, bytes], code_allowed: bool) -> tuple[bool, str]:
    """Pure check of one step (parent files -> commit files)."""
    changed = sorted(n for n in set(old_files) | set(new_files) if old_files.get(n) != new_files.get(n))
    if not changed:
        return False, "the commit changes nothing"
    others = [n for n in changed if n != EDITABLE]
    if others:
        return False, f"the change touches {', '.join(others)}; only train.py may change"
    if code_allowed:
        return True, "any change of train.py allowed"
    try:
        old, new = old_files[EDITABLE].decode(), new_files[EDITABLE].decode()
    except (KeyError, UnicodeDecodeError):
        return False, "train.py is missing or not UTF-8"
    return constants_only_change(old, new)


def check_lineage(ws: Workspace, commit: str, accepted: set[str], policy: TrustPolicy, peer: str) -> tuple[bool, str]:
    """Check every step from the nearest accepted ancestor to `commit` (first parents)."""
    steps: list[str] = []
    cur: str | None = commit
    try:
        while cur is not None and cur not in accepted:
            steps.append(cur)
            if len(steps) > MAX_LINEAGE:
                return False, "lineage too long"
            cur = ws.parent_of(cur)
        if cur is None:
            return False, "the commit does not descend from the swarm's genesis"
        for c in reversed(steps):
            parent = ws.parent_of(c)
            assert parent is not None
            odd = {n: m for n, m in ws.tree_modes(c).items() if m != REGULAR_FILE}
            if odd:  # files_of sees regular files only: a subtree or symlink would pass unseen
                name, mode = sorted(odd.items())[0]
                return False, f"commit {c[:7]}: {name} is not a regular file (mode {mode:o}); the target is flat"
            ok, reason = check_change(ws.files_of(parent), ws.files_of(c), policy.trusts_code_from(peer))
            if not ok:
                return False, f"commit {c[:7]}: {reason}"
    except WorkspaceError as e:
        return False, str(e)
    if not policy.trusts_code_from(peer):
        return True, "only constant values changed"
    if peer in policy.trusted_peers or policy.policy == "any":
        return True, "trusted"
    return True, "code accepted: it runs only in the sandbox, and this node's harness measures it"
