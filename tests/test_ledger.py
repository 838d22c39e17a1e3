import math

from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_research.store.ledger import Ledger, Run

hex40 = st.text("0123456789abcdef", min_size=40, max_size=40)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=40, deadline=None)
@given(exp=hex40, commit=hex40, value=st.none() | finite, desc=st.text(max_size=200),
       status=st.sampled_from(["kept", "discarded", "crash"]))
def test_run_round_trip(tmp_path_factory, exp, commit, value, desc, status):
    ledger = Ledger(tmp_path_factory.mktemp("l") / "ledger.sqlite")
    ledger.add_experiment(exp, "p" * 40, "a" * 40, "b" * 40, commit, desc, "local")
    run = Run(exp_id=exp, commit_id=commit, protocol_id="p" * 40, kind="experiment", status="running",
              description=desc, seed=3)
    rid = ledger.start_run(run)
    ledger.finish_run(rid, status, val_bpb=value, reason="r")
    (got,) = ledger.runs(exp_id=exp)
    assert got.status == status and got.description == desc and got.seed == 3
    assert (got.val_bpb is None and value is None) or math.isclose(got.val_bpb, value) or got.val_bpb == value
    assert ledger.knows(exp) and ledger.experiment(exp)["commit_id"] == commit
    ledger.close()


def test_peer_runs_are_idempotent_and_first_report_wins(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.add_experiment("e" * 40, "p", "a", "b", "c" * 40, "first", "peer", "peerA")
    assert not ledger.add_experiment("e" * 40, "p", "a", "b", "d" * 40, "second", "peer", "peerB")
    run = Run(exp_id="e" * 40, commit_id="c" * 40, protocol_id="p", kind="experiment", status="kept", peer="peerA",
              val_bpb=1.5, received_at=1.0)
    assert ledger.add_peer_run(run)
    assert not ledger.add_peer_run(run)  # gossip replay
    assert len(ledger.runs(origin="peer")) == 1
    assert ledger.experiment("e" * 40)["description"] == "first"


def test_abort_running_and_reopen(tmp_path):
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.start_run(Run(exp_id="e" * 40, commit_id="c" * 40, protocol_id="p", kind="experiment", status="x"))
    ledger.close()
    ledger = Ledger(path)
    assert ledger.abort_running("stopped") == 1
    (r,) = ledger.runs()
    assert r.status == "aborted" and r.reason == "stopped"
    ledger.record_baseline("p", "c" * 40, 1.25, "measured")
    ledger.set_meta("k", {"a": [1, 2]})
    ledger.close()
    ledger = Ledger(path)
    assert ledger.baseline("p").val_bpb == 1.25 and ledger.get_meta("k") == {"a": [1, 2]}


def test_corrupt_ledger_is_a_clear_error(tmp_path):
    import pytest

    from p2p_research.store.ledger import LedgerError

    p = tmp_path / "bad.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError):
        Ledger(p)


def test_the_leaderboard_ranks_kept_results_and_says_each_status(tmp_path):
    """A discarded result with a low value (it lost to its own, lower baseline) is not ranked first."""
    from p2p_research.daemon.views import leaderboard_view
    from p2p_research.store.ledger import Ledger, Run

    led = Ledger(tmp_path / "l.sqlite")
    try:
        for exp, value, status in (("g" * 40, 1.9, "baseline"), ("a" * 40, 1.5, "kept"), ("b" * 40, 1.4, "discarded")):
            led.add_experiment(exp, "p", "", "t" + exp[:3], "c" + exp[1:], f"exp {exp[0]}", "local")
            rid = led.start_run(Run(exp_id=exp, commit_id="c" + exp[1:], protocol_id="p", kind="experiment",
                                    status="running", origin="local", peer="me", parent="", seed=0, description=""))
            led.finish_run(rid, status, val_bpb=value)
        rows = leaderboard_view(led, "me")["p"]
        assert [(r["rank"], r["status"], r["val_bpb"]) for r in rows] == [
            (1, "kept", 1.5), (2, "baseline", 1.9), (None, "discarded", 1.4)]
    finally:
        led.close()


def test_the_swarm_view_and_its_results_tsv(tmp_path):
    """Three finders: each node's best over time, kept results by finder, the knobs that paid, and a
    swarm-wide results.tsv that autoresearch's analysis reads."""
    from autoresearch_analysis import analyze

    from p2p_research.research.io.swarm_view import results_tsv, rows_of, view
    from p2p_research.store.ledger import Ledger, Run

    led = Ledger(tmp_path / "l.sqlite")
    runs = [("me", "g", "", "baseline", 2.0, "baseline", "baseline"),
            ("peerA", "a", "g", "experiment", 1.9, "kept", "LEARNING_RATE 0.002 -> 0.003"),
            ("peerB", "b", "a", "experiment", 1.95, "discarded", "N_LAYER 4 -> 6"),
            ("me", "a", "g", "verification", 1.91, "confirmed", "LEARNING_RATE 0.002 -> 0.003"),
            ("peerB", "c", "a", "experiment", 1.8, "kept", "N_LAYER 4 -> 5; WARMUP 0.1 -> 0.2"),
            ("peerA", "d", "c", "experiment", None, "crash", "code: GPT.forward; +3 -1 lines")]
    try:
        for i, (peer, exp, parent, kind, value, status, desc) in enumerate(runs):
            led.add_experiment(exp * 40, "p", parent * 40, "t" + exp, exp * 40, desc, "peer")
            rid = led.start_run(Run(exp_id=exp * 40, commit_id=exp * 40, protocol_id="p", kind=kind, status="running",
                                    origin="local" if peer == "me" else "peer", peer=peer, parent=parent * 40,
                                    seed=0, description=desc))
            led.finish_run(rid, status, val_bpb=value, finished_at=1000.0 + i)
        rows = rows_of(led, "p")
    finally:
        led.close()
    v = view(rows, "me")
    assert [n["peer"] for n in v["nodes"]] == ["peerB", "peerA", "me"]
    assert {n["peer"]: n["kept"] for n in v["nodes"]} == {"peerB": 1, "peerA": 1, "me": 0}
    knobs = {k["knob"]: k for k in v["knobs"]}
    assert knobs["N_LAYER"]["tried"] == 2 and knobs["N_LAYER"]["kept"] == 1
    assert abs(knobs["N_LAYER"]["gain"] - 0.1) < 1e-9 and abs(knobs["LEARNING_RATE"]["gain"] - 0.1) < 1e-9
    assert v["knobs"][0]["knob"] in ("LEARNING_RATE", "N_LAYER", "WARMUP")
    assert [b for _, b in v["swarm_best_over_time"]] == [2.0, 1.9, 1.8]
    tsv = tmp_path / "swarm.tsv"
    tsv.write_text(results_tsv(rows))
    lines = tsv.read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription" and len(lines) == 6  # verification left out
    assert "[by peerB]" in lines[3]
    stats = analyze(tsv, tmp_path / "progress.png")
    assert stats  # autoresearch's notebook logic reads it


def test_a_run_s_cpu_seconds_are_the_reference_for_its_descendants(tmp_path):
    """The newest local run of a commit that came to a value gives its CPU seconds; a crash, a peer's
    run or a run without the figure does not."""
    ledger = Ledger(tmp_path / "ledger.db")
    commit = "c" * 40

    def add(status, origin="local", cpu=None, val=1.5):
        rid = ledger.start_run(Run(exp_id="e" * 40, commit_id=commit, protocol_id="p", kind="experiment",
                                   status="running", origin=origin))
        ledger.finish_run(rid, status, val_bpb=val, metrics={"cpu_s": cpu} if cpu else {})

    assert ledger.run_cpu_seconds(commit, "p") is None
    add("done", cpu="4.00")
    add("crash", cpu="99.0", val=None)
    add("done", origin="peer", cpu="0.5")
    add("done")
    assert ledger.run_cpu_seconds(commit, "p") == 4.0
    assert ledger.run_cpu_seconds(commit, "other") is None
    ledger.close()


def test_the_inspection_tables_are_readable_at_80_columns(tmp_path):
    """experiments, leaderboard and doctor in an 80-column terminal: no line is wider, and a
    description keeps its words whole (the commit column makes room for it)."""
    import os

    from conftest import run_cli

    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "node")
    led = Ledger(home.ledger)
    long = "LEARNING_RATE 0.002 -> 0.00193; TIE_EMBEDDINGS True -> False; WARMUP_FRAC 0.05 -> 0.1"
    try:
        for exp, value, status in (("g" * 40, 1.9, "baseline"), ("a" * 40, 1.5, "kept"), ("b" * 40, 1.4, "discarded")):
            led.add_experiment(exp, "p", "", "t" + exp[:3], "c" + exp[1:], long, "local")
            rid = led.start_run(Run(exp_id=exp, commit_id="c" + exp[1:], protocol_id="p", kind="experiment",
                                    status="running", origin="local", peer="me", parent="", seed=0, description=long))
            led.finish_run(rid, status, val_bpb=value)
    finally:
        led.close()
    env = {**os.environ, "COLUMNS": "80", "LINES": "50"}
    for args in (["experiments"], ["leaderboard"], ["doctor"]):
        r = run_cli([*args, "--home", home.path], env=env, timeout=120)
        lines = r.stdout.splitlines()
        assert lines and max(len(line) for line in lines) <= 80, (args, r.stdout, r.stderr)
        if args != ["doctor"]:  # wrapped at spaces, never inside a word or number
            assert all(word in r.stdout for word in long.split()[:7]), r.stdout
        if args == ["experiments"]:
            assert "LEARNING_RATE 0.002 -> 0.00193;" in r.stdout, r.stdout


def test_run_statuses_are_spelled_once_and_compare_as_the_ledger_s_strings():
    from p2p_research.store.status import COMPLETED, FINAL, RESULT, VALUED, RunStatus, sql_in
    from p2p_research.wire.messages import RESULT_STATUSES

    assert RunStatus.KEPT == "kept" and "crash" in COMPLETED and {"kept": 1}[RunStatus.KEPT] == 1
    assert RESULT_STATUSES == {"kept", "discarded", "crash", "baseline"} == set(RESULT)
    assert all(type(s) is str for s in RESULT_STATUSES)  # the wire's error messages list plain names
    assert set(COMPLETED) < set(RESULT) < set(FINAL) and RunStatus.ABORTED not in FINAL
    assert sql_in(VALUED) == "('kept','discarded','baseline','confirmed')"


def test_a_protocol_s_commits_start_with_those_a_node_holds(tmp_path):
    """A relay learns which swarm a stored protocol is of from the genesis its commits descend from, so
    the commits it looks at must be ones whose objects it holds: kept results, then baselines. A swarm
    whose results were all discarded (their objects are never fetched) was known by those alone, and a
    late joiner listed it without its protocol (test_relay's late joiner, once in a suite run)."""
    ledger = Ledger(tmp_path / "l.sqlite")

    def run(exp: str, commit: str, status: str, kind: str = "experiment") -> None:
        ledger.add_peer_run(Run(exp_id=exp * 40, commit_id=commit * 40, protocol_id="p", kind=kind, status=status,
                                peer="peerA", val_bpb=1.5, received_at=1.0))

    run("a", "0", "baseline", kind="baseline")
    for e in "bcdef":
        run(e, e, "discarded")
    assert ledger.commits_of("p")[0] == "0" * 40  # the genesis, not the newest discarded results
    run("1", "1", "kept")
    run("2", "0", "baseline", kind="baseline")  # the genesis measured twice: listed once
    assert ledger.commits_of("p") == ["1" * 40, "0" * 40, "f" * 40]
    ledger.close()
