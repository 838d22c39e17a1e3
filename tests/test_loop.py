"""The loop's decisions, driven directly (sans-IO) with hypothesis."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2p_research.research import loop as L

values = st.floats(min_value=0.5, max_value=8.0, allow_nan=False)


@given(values, values, st.floats(min_value=0, max_value=0.1))
def test_keep_only_beyond_margin(base, value, margin):
    status, _ = L.decide_keep(base, value, margin)
    assert (status == "kept") == (base - value > margin)
    assert L.decide_keep(base, None, margin)[0] == "crash"
    assert L.decide_keep(base, float("nan"), margin)[0] == "crash"


def test_straight_run():
    m = L.ResearchLoop("g" * 40, None, margin=0.01, max_experiments=2)
    a = m.next_action()
    assert a == L.MeasureBaseline("g" * 40)
    m.handle(L.BaselineMeasured("g" * 40, 2.0))
    assert isinstance(m.next_action(), L.Propose)
    m.handle(L.Proposed("e1", "c1", "d"))
    assert m.next_action() == L.RunExperiment("e1", "c1", "d")
    v = m.handle(L.ExperimentFinished("e1", "c1", 1.5))
    assert v.status == "kept" and m.baseline_commit == "c1" and m.baseline_value == 1.5
    m.handle(L.Proposed("e2", "c2", "d")) if isinstance(m.next_action(), L.Propose) else None
    v = m.handle(L.ExperimentFinished("e2", "c2", 1.495))
    assert v.status == "discarded" and m.baseline_commit == "c1"
    assert isinstance(m.next_action(), L.Done)


def test_wrong_event_is_loud():
    m = L.ResearchLoop("g", None)
    m.next_action()
    with pytest.raises(L.ProtocolError):
        m.handle(L.ExperimentFinished("e", "c", 1.0))


def test_baseline_failures_and_skips_end_with_error():
    m = L.ResearchLoop("g", None)
    for _ in range(L.MAX_BASELINE_FAILURES):
        m.next_action()
        m.handle(L.BaselineMeasured("g", None, "boom"))
    d = m.next_action()
    assert isinstance(d, L.Done) and d.error and "boom" in d.reason and not d.resumable
    m = L.ResearchLoop("g", 1.0)
    for _ in range(L.MAX_CONSECUTIVE_SKIPS):
        m.next_action()
        m.handle(L.ProposalSkipped("nothing"))
    d = m.next_action()
    # nothing to propose from this baseline: the daemon follows the swarm and resumes on a new one
    assert isinstance(d, L.Done) and d.resumable


class LoopMachine(RuleBasedStateMachine):
    """Random interleavings of outcomes: the baseline only ever improves, by more than the margin."""

    def __init__(self):
        super().__init__()
        self.m = L.ResearchLoop("g", None, margin=0.01)
        self.best = None
        self.n = 0

    @rule(v=st.none() | values)
    def step(self, v):
        a = self.m.next_action()
        if isinstance(a, L.MeasureBaseline):
            self.m.handle(L.BaselineMeasured(a.commit, v))
        elif isinstance(a, L.Propose):
            self.n += 1
            self.m.handle(L.Proposed(f"e{self.n}", f"c{self.n}", ""))
        elif isinstance(a, L.RunExperiment):
            before = self.m.baseline_value
            verdict = self.m.handle(L.ExperimentFinished(a.exp_id, a.commit, v))
            if verdict.status == "kept":
                assert v is not None and before - v > 0.01
                assert self.m.baseline_commit == a.commit
            else:
                assert self.m.baseline_value == before

    @rule()
    def skip(self):
        if isinstance(self.m.next_action(), L.Propose):
            self.m.handle(L.ProposalSkipped("x"))

    @invariant()
    def monotone(self):
        if self.m.baseline_value is not None:
            if self.best is not None:
                assert self.m.baseline_value <= self.best
            self.best = self.m.baseline_value


TestLoopMachine = LoopMachine.TestCase
TestLoopMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_adopt_waits_for_the_run_in_flight_unless_the_loop_was_stopped():
    """A drained node follows the swarm: an action the stop abandoned must not block adoption forever."""
    m = L.ResearchLoop("g" * 40, 2.0, margin=0.01)
    m.next_action()
    m.handle(L.Proposed("e1", "c1", "d"))
    assert m.next_action() == L.RunExperiment("e1", "c1", "d")
    with pytest.raises(L.ProtocolError):
        m.adopt("p1", 1.9)
    m.stop("drained")
    m.adopt("p1", 1.9)
    assert m.baseline_commit == "p1" and isinstance(m.next_action(), L.Done)


def test_a_sibling_workers_better_baseline_is_taken_between_experiments():
    """Workers of one node share a baseline: an offer is taken at once when idle, else when the
    experiment in flight ends, and that experiment is judged against the better of the two."""
    loop = L.ResearchLoop("base", 1.0, margin=0.01)
    first = loop.next_action()
    assert isinstance(first, L.Propose)
    loop.offer("sib", 0.9)  # idle (about to propose): taken at once
    assert loop.baseline_commit == "sib" and loop.next_action() == L.Propose("sib")
    loop.handle(L.Proposed("e1", "c1", "x"))
    loop.offer("sib2", 0.8)  # in flight: waits
    assert loop.baseline_commit == "sib"
    verdict = loop.handle(L.ExperimentFinished("e1", "c1", 0.85, ""))
    assert verdict.status == "discarded"  # better than its own baseline (0.9), not than the sibling's (0.8)
    assert loop.next_action() == L.Propose("sib2") and loop.baseline_value == 0.8
    loop.offer("worse", 0.95)  # never a step back
    assert loop.baseline_commit == "sib2"


# --- the genesis measured by peers (measure_first=False) ---------------------------------------------
def _first_experiment(m: L.ResearchLoop, value: float | None) -> L.Verdict | None:
    a = m.next_action()
    assert a == L.Propose("g"), "a node that does not measure first experiments at once"
    m.handle(L.Proposed("e1", "c1", "d"))
    assert m.next_action() == L.RunExperiment("e1", "c1", "d")
    return m.handle(L.ExperimentFinished("e1", "c1", value))


def test_a_learned_value_keeps_a_result_that_beats_it():
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    assert _first_experiment(m, 1.5) is None            # held: no value yet
    assert m.next_action() == L.AwaitBaseline("g")
    v = m.handle(L.BaselineLearned("g", 1.6))
    assert v is not None and v.status == "kept" and "as peers measured it" in v.reason
    assert (m.baseline_commit, m.baseline_value) == ("c1", 1.5)  # the node's own value, never the peers'
    assert m.next_action() == L.Propose("c1")
    assert [h.exp_id for h in m.history] == ["e1"]


def test_a_learned_value_never_discards_the_node_measures_first():
    """A peer claiming the genesis is far better than it is cannot make a node throw its result away."""
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    assert _first_experiment(m, 1.5) is None
    assert m.handle(L.BaselineLearned("g", 0.5)) is None  # a lie (or a truth) that would discard: not used
    assert m.next_action() == L.MeasureBaseline("g")
    v = m.handle(L.BaselineMeasured("g", 1.6))
    assert v is not None and v.status == "kept" and v.exp_id == "e1" and m.baseline_value == 1.5
    m2 = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    _first_experiment(m2, 1.595)
    m2.handle(L.BaselineLearned("g", 1.6))
    m2.next_action()
    v = m2.handle(L.BaselineMeasured("g", 1.6))
    assert v.status == "discarded" and (m2.baseline_commit, m2.baseline_value) == ("g", 1.6)


def test_no_value_from_peers_the_node_measures_itself_then_decides():
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    _first_experiment(m, 1.7)
    assert m.next_action() == L.AwaitBaseline("g")
    m.handle(L.BaselineUnavailable("g"))
    assert m.next_action() == L.MeasureBaseline("g")
    v = m.handle(L.BaselineMeasured("g", 1.6))
    assert v.status == "discarded" and m.baseline_value == 1.6 and m.next_action() == L.Propose("g")


def test_a_value_learned_during_the_first_run_decides_at_its_end_and_crashes_need_none():
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    m.next_action()
    m.handle(L.Proposed("e1", "c1", "d"))
    m.handle(L.BaselineLearned("g", 1.6))             # arrives while the experiment runs
    v = m.handle(L.ExperimentFinished("e1", "c1", 1.55))
    assert v.status == "kept"
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    v = _first_experiment(m, None)
    assert v.status == "crash" and m.next_action() == L.AwaitBaseline("g")
    m.handle(L.BaselineLearned("g", 1.6))               # nothing held: no verdict, and no value adopted
    assert m.next_action() == L.MeasureBaseline("g") and m.baseline_value is None


def test_late_or_foreign_news_is_ignored_and_wrong_order_is_loud():
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    _first_experiment(m, 1.5)
    assert m.handle(L.BaselineLearned("other", 1.6)) is None and m.next_action() == L.AwaitBaseline("g")
    with pytest.raises(L.ProtocolError):
        m.handle(L.BaselineUnavailable("other"))
    with pytest.raises(L.ProtocolError):
        m.handle(L.BaselineLearned("g", float("nan")))
    m.handle(L.BaselineLearned("g", 1.6))
    assert m.handle(L.BaselineLearned("g", 9.0)) is None and m.baseline_value == 1.5


class SharedGenesisMachine(RuleBasedStateMachine):
    """Any interleaving of peers' values (honest or lies), waits and runs: every experiment gets exactly
    one verdict; a discard is only ever decided against the node's own measurement; the baseline value
    is always one this node measured."""

    def __init__(self):
        super().__init__()
        self.m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
        self.n = 0
        self.finished: list[str] = []
        self.own: set[float] = set()

    @rule(v=st.none() | values, learned=st.none() | values)
    def step(self, v, learned):
        if learned is not None:
            self.m.handle(L.BaselineLearned(self.m.baseline_commit, learned))
        a = self.m.next_action()
        if isinstance(a, L.MeasureBaseline):
            self.m.handle(L.BaselineMeasured(a.commit, v))
            if v is not None:
                self.own.add(v)
        elif isinstance(a, L.AwaitBaseline):
            self.m.handle(L.BaselineUnavailable(a.commit))
        elif isinstance(a, L.Propose):
            self.n += 1
            self.m.handle(L.Proposed(f"e{self.n}", f"c{self.n}", ""))
        elif isinstance(a, L.RunExperiment):
            self.finished.append(a.exp_id)
            self.m.handle(L.ExperimentFinished(a.exp_id, a.commit, v))
            if v is not None:
                self.own.add(v)

    @invariant()
    def sound(self):
        decided = [h.exp_id for h in self.m.history]
        assert len(decided) == len(set(decided))
        held = [self.m._held.exp_id] if self.m._held is not None else []
        assert sorted(decided + held) == sorted(self.finished)
        assert len(held) <= 1
        assert self.m.baseline_value is None or self.m.baseline_value in self.own
        for h in self.m.history:
            if h.status == "discarded":
                assert "as peers measured it" not in h.reason


TestSharedGenesisMachine = SharedGenesisMachine.TestCase
TestSharedGenesisMachine.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)


def test_a_drain_while_a_result_waits_judges_it_first_then_stops():
    """A drained node stops proposing, but the result in hand still gets its verdict (and the node its
    genesis value, so that it can follow the swarm)."""
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    _first_experiment(m, 1.7)
    m.stop("drained")
    assert m.next_action() == L.AwaitBaseline("g")
    m.handle(L.BaselineUnavailable("g"))
    assert m.next_action() == L.MeasureBaseline("g")
    v = m.handle(L.BaselineMeasured("g", 1.6))
    assert v.status == "discarded" and m.baseline_value == 1.6
    assert isinstance(m.next_action(), L.Done)


def test_a_genesis_that_cannot_be_measured_ends_the_loop_with_the_result_unjudged():
    m = L.ResearchLoop("g", None, margin=0.01, measure_first=False)
    _first_experiment(m, 1.7)
    m.next_action()
    m.handle(L.BaselineUnavailable("g"))
    for _ in range(L.MAX_BASELINE_FAILURES):
        assert m.next_action() == L.MeasureBaseline("g")
        assert m.handle(L.BaselineMeasured("g", None, "boom")) is None
    d = m.next_action()
    assert isinstance(d, L.Done) and d.error and m._held is not None  # the engine records it as aborted


def test_an_unchanged_value_is_said_in_words():
    assert L.decide_keep(1.0, 1.0, 0.002) == ("discarded", "val_bpb unchanged")
    assert L.decide_keep(1.0, 1.5, 0.002)[1] == "val_bpb worse by 0.500000"


def test_a_swarm_node_takes_a_turn_before_each_proposal_and_decides_again_after_it():
    """research/life.py, the order both the engine and the DES's virtual node follow."""
    from p2p_research.research.life import Life, TakeTurn

    solo = L.ResearchLoop("g" * 40, 2.0, margin=0.01)
    assert isinstance(Life(solo, turns=False).next_step(), L.Propose)  # a solo node proposes at once

    m = L.ResearchLoop("g" * 40, 2.0, margin=0.01)
    life = Life(m, turns=True)
    step = life.next_step()
    assert isinstance(step, TakeTurn) and step.before == L.Propose("g" * 40)
    life.turn_taken(step)
    assert life.next_step() == L.Propose("g" * 40)  # nothing changed: the proposal goes ahead
    m.handle(L.Proposed("e1", "c1", "d"))
    assert life.next_step() == L.RunExperiment("e1", "c1", "d")
    m.handle(L.ExperimentFinished("e1", "c1", 2.5))  # discarded
    step = life.next_step()
    assert isinstance(step, TakeTurn)
    m.adopt("p" * 40, 1.5)  # the turn adopted a peer's result
    life.turn_taken(step)
    again = life.next_step()  # the proposal from the new baseline gets a turn of its own
    assert isinstance(again, TakeTurn) and again.before == L.Propose("p" * 40)


@pytest.mark.parametrize("measure_first", [True, False])
def test_no_experiments_asked_for_measures_the_baseline_and_ends(measure_first):
    """`-n 0`: a node that only verifies and follows measures the genesis (its verdicts rest on it), even
    where peers were to measure it, and proposes nothing."""
    m = L.ResearchLoop("g" * 40, None, margin=0.01, max_experiments=0, measure_first=measure_first)
    a = m.next_action()
    if not measure_first:  # the loop alone would wait for peers' value; the engine measures first for -n 0
        assert a == L.AwaitBaseline("g" * 40)
        m.handle(L.BaselineUnavailable("g" * 40))
        a = m.next_action()
    assert a == L.MeasureBaseline("g" * 40)
    m.handle(L.BaselineMeasured("g" * 40, 2.0))
    assert m.next_action() == L.Done("completed 0 experiments")
