"""The solo loop end to end through the real CLI: real git, SQLite, torch training in child processes."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_TOKENS, popen_cli, run_cli

from p2p_research.store.ledger import Ledger

NUDGE = f"{sys.executable} {ROOT / 'examples' / 'proposers' / 'nudge_constant.py'}"


def cli(*args, env=None, timeout=300, check=False):
    r = run_cli(args, timeout=timeout, env={**os.environ, **(env or {})})
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def read_tsv(home):
    with open(home / "results.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_init_is_deterministic_and_refuses_reuse(tmp_path):
    a = cli("init", "--home", tmp_path / "a", "--json", check=True)
    b = cli("init", "--home", tmp_path / "b", "--json", check=True)
    import json
    assert json.loads(a.stdout)["genesis"] == json.loads(b.stdout)["genesis"]
    again = cli("init", "--home", tmp_path / "a")
    assert again.returncode != 0 and again.stderr.startswith("error:") and "already" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.slow
def test_run_loop_keeps_logs_and_resumes(tiny_home):
    home = tiny_home.path
    cli("run", "--home", home, "-n", 1, check=True)
    rows = read_tsv(home)
    assert rows[0]["status"] == "keep" and rows[0]["description"] == "baseline measurement"
    assert len(rows) == 2 and {r["status"] for r in rows[1:]} <= {"keep", "discard", "crash"}
    ledger = Ledger(home / "ledger.sqlite")
    exps = ledger.runs(kind="experiment")
    assert len(exps) == 1 and all(r.status in ("kept", "discarded", "crash") for r in exps)
    assert all(os.path.exists(r.log_path) for r in exps)
    ids = {r.exp_id for r in exps}
    # every experiment, kept or discarded, has its own ref
    import pygit2
    repo = pygit2.Repository(str(home / "repo"))
    for exp_id in ids:
        assert f"refs/p2p/exp/{exp_id}" in repo.references
    ledger.close()
    # a restart resumes from the ledger: no second baseline measurement, new experiments are new ids
    cli("run", "--home", home, "-n", 1, check=True)
    ledger = Ledger(home / "ledger.sqlite")
    assert len(ledger.runs(kind="baseline")) == 1
    exps = ledger.runs(kind="experiment")
    assert len(exps) == 2 and len({r.exp_id for r in exps}) == 2
    ledger.close()


@pytest.mark.slow
def test_the_noise_is_measured_on_the_first_runs(tiny_home):
    """With an automatic margin, the node's first runs measure its noise: the genesis at two more seeds,
    2 sigma of the spread of the three is the margin its first experiment is judged by (the fixed
    0.002 knows nothing of this machine, target or budget)."""
    home = tiny_home.path
    cfg = tiny_home.load_config()
    cfg.research.noise_runs = 2
    tiny_home.write_config(cfg)
    # the experiment doubles the learning rate, a gain at the tests' budget: its verdict names the margin
    r = cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", NUDGE, check=True,
            env={"NUDGE_SEED": "0"})
    ledger = Ledger(home / "ledger.sqlite")
    try:
        noise = ledger.runs(kind="noise")
        assert [n.seed for n in noise] == [1000, 1001] and all(n.val_bpb is not None for n in noise)
        (key,) = [k for (k,) in ledger.db.execute("SELECT key FROM meta") if k.startswith("noise:")]
        rec = ledger.get_meta(key)
        base = ledger.runs(kind="baseline")[0]
        assert rec["source"] == "auto" and rec["values"] == [base.val_bpb, *(n.val_bpb for n in noise)]
        assert rec["margin"] == pytest.approx(2 * rec["std"]) and rec["margin"] > 0
        (exp,) = ledger.runs(kind="experiment")
        assert f"{rec['margin']:.6f}" in exp.reason, exp.reason
    finally:
        ledger.close()
    assert "keep margin is now" in r.stderr
    # measured once per protocol: a restart does not measure it again
    cli("run", "--home", home, "-n", 1, check=True)
    ledger = Ledger(home / "ledger.sqlite")
    assert len(ledger.runs(kind="noise")) == 2
    ledger.close()


@pytest.mark.slow
def test_same_seed_same_val_bpb(tiny_home):
    home = tiny_home.path
    cli("noise", "--home", home, "--repeats", 2, check=True)
    ledger = Ledger(home / "ledger.sqlite")
    (noise_key,) = [k for (k,) in ledger.db.execute("SELECT key FROM meta") if k.startswith("noise:")]
    rec = ledger.get_meta(noise_key)
    assert len(rec["values"]) == 2 and rec["margin"] == pytest.approx(2 * rec["std"])
    ledger.close()
    # two runs of the baseline with the same seed agree exactly
    for _ in range(2):
        cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", NUDGE,
            env={"NUDGE_MODE": "none"})
    ledger = Ledger(home / "ledger.sqlite")
    base = ledger.runs(kind="baseline")
    assert len(base) == 1
    ledger.close()


def test_sigint_records_aborted_and_restart_recovers(tiny_home):
    home = tiny_home.path
    cfg = tiny_home.load_config()
    cfg.research.budget_tokens = TINY_TOKENS * 50  # long enough to interrupt
    tiny_home.write_config(cfg)
    p = popen_cli(["run", "--home", home], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        if (home / "ledger.sqlite").exists():
            led = Ledger(home / "ledger.sqlite")
            running = led.runs(status="running")
            led.close()
            if running:
                break
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    ledger = Ledger(home / "ledger.sqlite")
    (r,) = ledger.runs()
    assert r.status == "aborted"
    ledger.close()
    # a stopped run is not a result: no results.tsv row (autoresearch's rows are keep, discard, crash)
    assert not (home / "results.tsv").exists() or all(row["status"] != "crash" for row in read_tsv(home))
    # no training child left behind
    assert subprocess.run(["pgrep", "-f", str(home / "runs")], capture_output=True).returncode == 1


@pytest.mark.slow
def test_command_proposer(tiny_home):
    home = tiny_home.path
    r = cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", NUDGE, check=True,
            env={"NUDGE_SEED": "7"})
    ledger = Ledger(home / "ledger.sqlite")
    (exp,) = ledger.runs(kind="experiment")
    assert exp.description.startswith("LEARNING_RATE")
    ledger.close()
    # the agent's output is kept beside the run's log, and both are found from the experiment's id
    shown = cli("show", exp.exp_id[:10], "--home", home, check=True).stdout
    assert "agent.log" in shown and "run.log" in shown and "p2p-research logs" in shown, shown
    assert "val_bpb" in cli("logs", exp.exp_id[:10], "--home", home, "-f", check=True).stdout
    agent = cli("logs", exp.exp_id[:10], "--home", home, "--agent", check=True).stdout
    assert exp.description in agent, agent
    # no change, a change outside train.py, unparseable code: clear skips, never a crash; the harness stays intact
    # (a change outside train.py happens in the agent's scratch copy: it is discarded, so only the
    # train.py it did not change counts)
    for mode, words in (("none", "no change"), ("other", "no change to train.py"), ("broken", "does not parse")):
        r = cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", NUDGE,
                "--verbose", env={"NUDGE_MODE": mode}, timeout=120)
        assert r.returncode == 1 and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    # each skip is one line in `run` (it was a warning and a result line); the agent's output is kept
    r = cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", NUDGE,
            env={"NUDGE_MODE": "none"}, timeout=120)
    said = (r.stdout + r.stderr).count("proposal skipped")
    assert r.returncode == 1 and said == 10, r.stdout + r.stderr
    assert len(list((home / "logs" / "agents").glob("*.log"))) >= 10
    import pygit2
    repo = pygit2.Repository(str(home / "repo"))
    assert not {p for p, f in repo.status().items() if not f & pygit2.GIT_STATUS_IGNORED}


def test_bad_input_is_one_line(tmp_path):
    r = cli("run", "--home", tmp_path / "missing")
    assert r.returncode != 0 and r.stderr.startswith("error: no node home")
    cli("init", "--home", tmp_path / "h", check=True)
    (tmp_path / "h" / "node.toml").write_text("[research]\nbudget_tokens = -5\n")
    r = cli("run", "--home", tmp_path / "h")
    assert r.returncode != 0 and "budget_tokens" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "h" / "node.toml").write_text("[research]\n")
    r = cli("run", "--home", tmp_path / "h", "--budget-tokens", 5, "--budget-seconds", 3)
    assert r.returncode != 0 and "not both" in r.stderr


def test_an_adopted_row_describes_the_change_from_the_previous_baseline(tmp_path):
    """A lineage of two steps (N_LAYER, then LEARNING_RATE) adopted at once: the row names both, not
    only the last step's description (analysis.ipynb credits the gain to the row's description)."""
    from p2p_research.research import loop as L
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import ResearchEngine
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer

    home = init_home(tmp_path / "n")
    ctx = open_context(home, home.load_config())
    try:
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
        ws = ctx.workspace
        genesis = ws.baseline
        train = ws.files_of(genesis)["train.py"]
        step1 = ws.commit_experiment(genesis, {"train.py": train.replace(b"N_LAYER = 4 ", b"N_LAYER = 6 ")},
                                     "N_LAYER 4 -> 6", "0" * 40)
        step2 = ws.commit_experiment(step1, {"train.py": ws.files_of(step1)["train.py"].replace(
            b"LEARNING_RATE = 0.002 ", b"LEARNING_RATE = 0.003 ")}, "LEARNING_RATE 0.002 -> 0.003", "0" * 40)
        exp_id = engine.ensure_registered(step2, "LEARNING_RATE 0.002 -> 0.003", origin="peer")
        engine.loop = L.ResearchLoop(genesis, 1.9)
        assert engine.adopt(step2, 1.8, "better", exp_id, "peerX")
        last = read_tsv(home.path)[-1]
        assert last["status"] == "adopted" or "adopted" in last["description"], last
        assert "N_LAYER 4 -> 6" in last["description"] and "LEARNING_RATE 0.002 -> 0.003" in last["description"], last
        assert "peerX" in last["description"]
    finally:
        ctx.ledger.close()


def _watch_trainer_and_commit_a_change(engine, note):
    """Wrap the engine's trainer so that `note(args)` is called as each run starts training, and commit
    one constant change (N_LAYER 4 -> 6) onto the genesis: the commit."""
    real = engine.trainer

    async def trainer(*a, **k):
        note(a)
        return await real(*a, **k)

    engine.trainer = trainer
    ws = engine.ctx.workspace
    train = ws.files_of(ws.genesis)["train.py"]
    return ws.commit_experiment(ws.genesis, {"train.py": train.replace(b"N_LAYER = 4 ", b"N_LAYER = 6 ")},
                                "N_LAYER 4 -> 6", "0" * 40)


def test_a_run_whose_experiment_a_peer_claimed_first_gives_way_before_it_trains(tmp_path):
    """A peer's claim that arrives after the proposer found the experiment unknown but before the run
    could be stopped (there was none yet) is asked about as the run starts: the run gives way at once,
    is recorded as aborted with the reason, and nothing is trained (two nodes whose claims crossed
    in that window both ran the experiment, seen under load)."""
    import trio

    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import Hooks, ResearchEngine
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer

    home = init_home(tmp_path / "n")
    ctx = open_context(home, home.load_config())
    asked = []

    def contested(exp_id, runs_finished):
        asked.append((exp_id, runs_finished))
        return "yielded to 12D3KooWpeer's claim"

    try:
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0), Hooks(contested=contested))
        trained = []
        commit = _watch_trainer_and_commit_a_change(engine, lambda a: trained.append(a))
        er = trio.run(engine.execute, commit, "experiment", "N_LAYER 4 -> 6", 0)
        assert er.outcome is None and er.run.status == "aborted" and "12D3KooWpeer" in er.run.reason
        assert not trained and asked == [(er.run.exp_id, 0)]
        assert [(r.status, r.reason) for r in ctx.ledger.runs(exp_id=er.run.exp_id)] == [("aborted", er.run.reason)]
    finally:
        ctx.ledger.close()


def test_a_re_run_s_progress_ends_with_the_run(tmp_path):
    """A node following the swarm re-runs peers' results after its research is done: while a re-run
    trains, the progress line and `status` show it; once it ends they show what the engine did before
    (here "done"), not "training" with a growing count of seconds (seen in a real 35-daemon run: "76 s /
    ~15 s" a minute after the re-run). A run inside a run (the genesis measured as a reference) gives the
    outer run's phase back as well."""
    import trio

    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import ResearchEngine
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer

    home = init_home(tmp_path / "n")
    cfg = home.load_config()
    cfg.research.objective, cfg.research.surrogate_cost_s = "surrogate", 0.05
    home.write_config(cfg)
    ctx = open_context(home, home.load_config())
    try:
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
        seen = []
        commit = _watch_trainer_and_commit_a_change(
            engine, lambda a: seen.append((engine.progress.phase, engine.progress.label())))
        ws = ctx.workspace
        engine.progress.phase = "done"
        er = trio.run(engine.execute, commit, "verification", "verification of a peer's result", 0)
        assert er.outcome is not None and er.outcome.ok
        assert seen and seen[-1][0] == "training" and "verification of a peer's result" in seen[-1][1]
        assert engine.progress.phase == "done" and not engine.progress.label().startswith("training")
        engine.progress.phase = "proposing"
        trio.run(engine.execute, ws.genesis, "baseline", "baseline measurement", 0)
        assert seen[-1][0] == "baseline" and engine.progress.phase == "proposing"
    finally:
        ctx.ledger.close()


@pytest.mark.slow
def test_get_takes_the_winner_home_to_a_folder_or_a_branch(tiny_home, tmp_path):
    import json

    import pygit2

    home = tiny_home.path
    cli("run", "--home", home, "-n", 1, check=True)
    status = json.loads(cli("get", "--home", home, "--to", tmp_path, "--json", check=True).stdout)
    from p2p_research.research.io.workspace import Workspace
    best = Workspace(home / "repo").files_of(status["commit"])["train.py"]
    assert (tmp_path / "train.py").read_bytes() == best and status["val_bpb"] is not None
    # a different train.py of the user's is kept unless --force
    (tmp_path / "train.py").write_text("# my own edits\n")
    r = cli("get", "--home", home, "--to", tmp_path)
    assert r.returncode == 1 and "exists and differs" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    cli("get", "--home", home, "--to", tmp_path, "--force", check=True)
    assert (tmp_path / "train.py").read_bytes() == best
    # an autoresearch checkout (the folder inside a repository): a branch, the working tree untouched
    repo_dir = tmp_path / "checkout"
    folder = repo_dir / "autoresearch"
    folder.mkdir(parents=True)
    (folder / "train.py").write_text("# theirs\n")
    (folder / "prepare.py").write_text("# the harness\n")
    repo = pygit2.init_repository(str(repo_dir))
    repo.index.add_all()
    repo.index.write()
    sig = pygit2.Signature("u", "u@example.org")
    repo.create_commit("HEAD", sig, sig, "start", repo.index.write_tree(), [])
    head = str(repo.head.target)
    r = cli("get", "--home", home, "--to", folder, "--branch", "p2p/best", check=True)
    assert "branch p2p/best" in r.stdout
    repo = pygit2.Repository(str(repo_dir))
    commit = repo.references["refs/heads/p2p/best"].peel(pygit2.Commit)
    assert repo[commit.tree["autoresearch"].id]["train.py"].data == best
    assert repo[commit.tree["autoresearch"].id]["prepare.py"].data == b"# the harness\n"
    assert [str(p) for p in commit.parent_ids] == [head] and str(repo.head.target) == head
    assert "Lineage, genesis first:" in commit.message and "val_bpb" in commit.message
    assert (folder / "train.py").read_text() == "# theirs\n"
    # the branch that is checked out is refused: the working tree would be left behind
    r = cli("get", "--home", home, "--to", folder, "--branch", repo.head.shorthand)
    assert r.returncode == 1 and "checked out" in r.stderr, r.stderr
    r = cli("get", "nope", "--home", home, "--to", tmp_path)
    assert r.returncode == 1 and "no experiment or commit starts with" in r.stderr
    # the swarm at a glance (here a swarm of one): the tables, --json and a results.tsv for analysis.ipynb
    view = json.loads(cli("swarm", "--home", home, "--json", "--tsv", tmp_path / "swarm.tsv", check=True).stdout)
    assert view["nodes"] and view["runs"] >= 2 and view["swarm_best_over_time"]
    assert (tmp_path / "swarm.tsv").read_text().startswith("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    assert "what paid" in cli("swarm", "--home", home, check=True).stdout


def test_the_keep_rule_is_said_where_autoresearch_users_look(tmp_path):
    """init says it; a near miss's results.tsv row says why it was not kept; margin 0 keeps any gain."""
    from p2p_research.research import loop as L
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import ExperimentRun, ResearchEngine
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer
    from p2p_research.store.ledger import Run

    r = cli("init", "--home", tmp_path / "i", check=True)
    assert "keep rule" in r.stdout and "research.margin = 0" in r.stdout
    assert L.decide_keep(1.0, 0.9999, 0.0)[0] == "kept"  # margin 0: autoresearch's rule
    home = init_home(tmp_path / "n")
    ctx = open_context(home, home.load_config())
    try:
        engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
        commit = ctx.workspace.baseline
        exp_id = engine.ensure_registered(commit, "LEARNING_RATE 0.002 -> 0.0021")
        run = Run(exp_id=exp_id, commit_id=commit, protocol_id=ctx.protocol_id, kind="experiment", status="running",
                  origin="local", peer="me", parent="", seed=0, description="LEARNING_RATE 0.002 -> 0.0021")
        run.run_id = ctx.ledger.start_run(run)
        run.val_bpb = 1.999
        status, reason = L.decide_keep(2.0, 1.999, 0.002)
        engine.record_verdict(ExperimentRun(run), L.Verdict(exp_id, status, reason, False))
        row = read_tsv(home.path)[-1]
        assert row["status"] == "discard" and "near miss" in row["description"], row
        assert "within the noise margin" in row["description"] and "research.margin = 0" in row["description"]
    finally:
        ctx.ledger.close()


def test_results_tsv_starts_with_the_baseline_even_when_the_genesis_value_came_from_peers(tmp_path):
    """autoresearch's analysis reads the first row of results.tsv as the baseline. A node that took the
    genesis value from peers writes that value as its first row; an experiment that crashed before any
    baseline value was known waits for the baseline's row (or for the end of research)."""
    from p2p_research.research.io.context import open_context
    from p2p_research.research.io.engine import ResearchEngine
    from p2p_research.research.io.home_init import init_home
    from p2p_research.research.io.proposers import BuiltinProposer

    rows = lambda home: [line.split("\t") for line in home.results_tsv.read_text().splitlines()[1:]]  # noqa: E731
    for learned in (True, False):
        home = init_home(tmp_path / f"node-{learned}")
        ctx = open_context(home, home.load_config())
        try:
            engine = ResearchEngine(ctx, BuiltinProposer(ctx.space, seed=0))
            genesis = ctx.workspace.genesis
            engine._result_row("c" * 40, None, None, "crash", "a crash before the genesis value")
            assert not home.results_tsv.exists() or rows(home) == []
            if learned:  # the genesis value two peers agree on, then an experiment's verdict
                engine.peers_value = lambda commit, g=genesis: 1.5 if commit == g else None
                engine._result_row("d" * 40, 1.4, None, "kept", "a gain")
                assert [(r[0], r[3], r[4][:20]) for r in rows(home)] == [
                    (genesis[:7], "keep", "baseline measurement"), ("d" * 7, "keep", "a gain"),
                    ("c" * 7, "crash", "a crash before the g")]
                assert rows(home)[0][1] == "1.500000"
            else:  # measured here
                engine._result_row(genesis, 1.5, None, "baseline", "baseline measurement")
                assert [r[3] for r in rows(home)] == ["keep", "crash"]
        finally:
            ctx.close()
