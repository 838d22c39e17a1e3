"""What the node concludes from its own measurement of a run (pure).

The harness's value is the number; what train.py printed is only its claim. These functions say when
the claim is a lie, when a run's code may go without the harness's measurement, when a gain on the
validation windows fails to carry over to the node's private split, and when a model came too late.
"""

from __future__ import annotations

from p2p_research.research.constants import ConstantsError, constants_only_change

# A self-report and the harness's value of the same model on the same windows agree to float
# reordering (measured: identical to 6 decimals on CPU); bf16 on a GPU moves the third decimal.
LIE_TOLERANCE_BPB = 0.005
# Slack on a wall-clock budget before the hand-over: interpreter start, data, model build, export.
HANDOVER_SLACK_S = 30.0
HANDOVER_SLACK_FRACTION = 0.25
# Under a token budget, code other than the genesis's may spend this many times the CPU time its
# nearest ancestor measured here spent: room for an honest change's cost and for the machine's load
# (torch's threads spin while they wait for a core: an honest edit's re-run took 2.4x its genesis's
# CPU beside 1,000-node simulations on 2 cores), not for training many budgets long.
COMPUTE_SLACK = 4.0


def false_report(reported: float | None, measured: float) -> str | None:
    """Why the run's printed val_bpb is a lie about its own model, or None when it agrees (or there
    is none: a run that printed nothing claimed nothing)."""
    if reported is None or abs(reported - measured) <= LIE_TOLERANCE_BPB:
        return None
    return (f"train.py reported val_bpb {reported:.6f}, but this node's harness measured its model at "
            f"{measured:.6f}: a false report")


def self_report_allowed(genesis_train_py: bytes, train_py: bytes) -> bool:
    """A run may go unmeasured (its printed value taken) only if its code is the genesis's own with
    other constant values: that code hands its model over unless the genesis itself cannot, and it
    can patch nothing. Any other code must hand its model over to be believed."""
    if train_py == genesis_train_py:
        return True
    try:
        return constants_only_change(genesis_train_py.decode(), train_py.decode())[0]
    except (UnicodeDecodeError, ConstantsError, RecursionError, SyntaxError, ValueError):
        return False


def does_not_generalise(parent_public: float | None, parent_private: float | None, public: float,
                        private: float | None, margin: float) -> str | None:
    """Why a gain on the public validation windows is refuted: it does not carry over to windows of
    the node's private split (the same documents' distribution, drawn from a stream no run can have
    read). The reference is an ancestor this node measured itself on the same private windows, so the
    comparison is paired. A gain beyond the margin must keep at least half of itself, less half a
    margin, on the private split: a model fitted to the validation windows keeps none of it. None when
    the gain carries over, when there is no gain beyond the margin, or when a value is missing."""
    if parent_public is None or parent_private is None or private is None:
        return None
    gain = parent_public - public
    private_gain = parent_private - private
    if gain <= margin:
        return None  # no gain claimed beyond noise: nothing to generalise
    if private_gain < 0.5 * gain - 0.5 * margin:
        return (f"its gain on the validation windows ({gain:.4f} bpb) does not carry over to this node's "
                f"private split ({private_gain:+.4f} bpb): it fits the validation data, not the task")
    return None


def late_handover(after_s: float | None, budget_seconds: float | None, slack_s: float | None = None) -> str | None:
    """Why a model handed over after a wall-clock budget (plus slack) is refused: training longer than
    the swarm's budget must win nothing. A token budget is checked by the compute spent instead
    (over_compute): the run owns its data loader."""
    if after_s is None or budget_seconds is None:
        return None
    slack = slack_s if slack_s is not None else max(HANDOVER_SLACK_S, HANDOVER_SLACK_FRACTION * budget_seconds)
    limit = budget_seconds + slack
    if after_s > limit:
        return (f"the model was handed over {after_s:.0f} s after the run started, past the budget of "
                f"{budget_seconds:g} s (+{limit - budget_seconds:.0f} s slack): it trained too long")
    return None


def compute_limit(ancestor_cpu_s: float | None, slack: float = COMPUTE_SLACK, startup_cpu_s: float = 0.0) -> float | None:
    """The CPU seconds a run may spend under a token budget before its model is measured (over_compute
    says why): the runner stops a run there (research/runner.RunLimits.cpu_limit_s), so code that trains
    a hundred budgets long costs a verifier a few budgets, not its time limit. None without a reference."""
    if ancestor_cpu_s is None or ancestor_cpu_s <= 0:
        return None
    floor = _startup_floor(ancestor_cpu_s, startup_cpu_s)
    return floor + slack * (ancestor_cpu_s - floor)


def _startup_floor(ancestor_cpu_s: float, startup_cpu_s: float) -> float:
    """The part of the reference every run spends to start, outside the slack: never most of it."""
    return min(max(startup_cpu_s, 0.0), 0.8 * ancestor_cpu_s)


def over_compute(cpu_s: float | None, ancestor_cpu_s: float | None, slack: float = COMPUTE_SLACK,
                 startup_cpu_s: float = 0.0) -> str | None:
    """Why a model is refused for the compute spent before it was handed over, under a token budget.

    The run owns its data loader, so the tokens it trained on cannot be counted from outside; the CPU
    time of its processes can (the kernel counts it, research/runner.CpuMeter). The reference is
    the nearest ancestor this node ran itself under the same budget: training several budgets long
    costs several times its CPU. A model that merely grows is bounded too, by `slack` per kept
    generation, which each generation must earn with a verified gain. `startup_cpu_s` is what starting
    the interpreter and importing torch costs every run (measured by the node, harness/measure.py):
    the slack applies to the rest, so a tiny budget, where starting up is most of a run, is not
    slack enough for sixteen budgets of training. None when within, or when either figure is missing
    (nothing to compare: the run's time limit still bounds it)."""
    limit = compute_limit(ancestor_cpu_s, slack, startup_cpu_s)
    if cpu_s is None or limit is None or ancestor_cpu_s is None:
        return None
    if cpu_s > limit:
        floor = _startup_floor(ancestor_cpu_s, startup_cpu_s)
        return (f"the run spent {cpu_s:.1f} CPU-s before its model was measured, over {slack:g}x the "
                f"{ancestor_cpu_s:.1f} CPU-s of its ancestor under the same token budget (beyond the "
                f"{floor:.1f} CPU-s every run takes to start): it trained past the budget")
    return None
