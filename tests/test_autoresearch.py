"""An autoresearch folder as it is: init, the solo loop, coding agents through the adapters, two nodes.

`tests/fixtures/autoresearch/` has autoresearch's shape (prepare.py with `TIME_BUDGET`, train.py with
its hyperparameter block, `2**k` and a tuple among the constants, its exact summary block and its FAIL
fast-fail, program.md with its branch-and-loop-forever instructions, pyproject.toml, uv.lock,
.python-version) and trains a tiny model on CPU in a 2 s budget of its own CPU time (wall clock on CUDA). Each test gives its copy
its own interpreter in `.venv` with a `kernels` module the node's interpreter lacks, so train.py only
runs if the node runs it the target's way. The coding agents are scripted stand-ins
(`tests/fake_agents/`) that parse exactly the flags the adapters in `examples/proposers/` pass.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest
from autoresearch_helpers import (
    ADAPTERS,
    FIXTURE,
    agent_env,
    autoresearch_folder,
    cli,
    init_node,
    local_runs,
    tsv_rows,
)
from daemon_helpers import Daemon, wait_for

from p2p_research.home import NodeHome
from p2p_research.research.io.home_init import detect_train_command


def analyze(tsv: Path, png: Path) -> dict:
    """autoresearch's analysis (tests/autoresearch_analysis.py), imported when a test asks: its pandas
    and matplotlib cost every test process half a second to collect this module."""
    from autoresearch_analysis import analyze as run

    return run(tsv, png)


def test_init_takes_the_folder_as_it_is(tmp_path):
    folder = autoresearch_folder()
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True).returncode != 0
    home = tmp_path / "node"
    info = json.loads(cli("init", "--home", home, "--target", folder, "--json", check=True).stdout)
    assert info["files"] == [".python-version", "prepare.py", "program.md", "pyproject.toml", "train.py", "uv.lock"]
    assert info["budget"] == "2 s" and info["hardware_in_protocol"] and info["hardware"]
    expected = detect_train_command(folder).command
    assert info["train_command"] == expected
    if not shutil.which("uv"):
        assert expected.endswith(".venv/bin/python train.py")
    assert info["search_space"] == {"origin": "inferred", "knobs": 13}
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before  # the folder is untouched
    # the knobs: inferred from the hyperparameter block, forms as written, strings and zeros left alone
    knobs = json.loads(cli("knobs", "--home", home, "--json", check=True).stdout)
    by_name = {k["name"]: k for k in knobs["knobs"]}
    assert by_name["TOTAL_BATCH_SIZE"]["value"] == "2**10" and by_name["TOTAL_BATCH_SIZE"]["step"] == "pow2"
    assert by_name["ADAM_BETAS[1]"]["step"] == "complement" and by_name["MATRIX_LR"]["log"]
    assert {k["name"] for k in knobs["left_out"]} >= {"WINDOW_PATTERN", "WARMUP_RATIO", "FINAL_LR_FRAC"}
    table = cli("knobs", "--home", home, check=True).stdout
    assert "TOTAL_BATCH_SIZE" in table and "not searched: WINDOW_PATTERN" in table
    # the harness fixes its budget: another one is a clear error, not a silent mismatch
    r = cli("run", "--home", home, "-n", 1, "--budget-seconds", 60)
    assert r.returncode != 0 and "fixes its budget (TIME_BUDGET = 2 in prepare.py)" in r.stderr


def test_train_command_detection():
    target = FIXTURE  # pyproject.toml + uv.lock, no .venv in the repository's copy
    uv = detect_train_command(target, which=lambda name: "/usr/bin/uv")
    assert uv.command == f"uv run --frozen --project {target} train.py"
    assert detect_train_command(target, which=lambda name: None).command == ""
    assert detect_train_command(None).command == ""


@pytest.mark.slow
def test_solo_loop_on_an_autoresearch_folder(tmp_path):
    """The builtin proposer (inferred space) and autoresearch's summary, FAIL and results.tsv semantics;
    the model is handed over at autoresearch's own evaluate_bpb call and measured by the node."""
    folder = autoresearch_folder()
    home = init_node(tmp_path, "node", folder)
    r = cli("run", "--home", home, "-n", 2, check=True)
    # every result is printed, the last one included
    assert "baseline" in r.stderr and "[2] " in r.stderr, r.stderr
    rows = tsv_rows(home)
    assert [row["status"] for row in rows][0] == "keep" and rows[0]["description"] == "baseline measurement"
    assert len(rows) == 3 and all(row["status"] in ("keep", "discard", "crash") for row in rows)
    runs = local_runs(home)
    base = runs[0]
    metrics = json.loads(base["metrics"])
    assert {"mfu_percent", "depth", "peak_vram_mb", "total_tokens_M", "num_params_M"} <= set(metrics)
    assert base["tokens"] == round(float(metrics["total_tokens_M"]) * 1e6) and base["num_steps"] > 0
    assert base["memory_gb"] == 0.0  # peak_vram_mb on CPU
    # autoresearch's train.py runs unchanged, and this node's harness measured what it handed over
    assert metrics["measured_by"] == "harness", metrics
    assert abs(float(metrics["reported_val_bpb"]) - base["val_bpb"]) < 1e-3
    # a diverging change (autoresearch prints FAIL and exits 1) is a crash with the reason, through the
    # generic adapter with a plain command as the agent
    sed = "sed -i 's/^MATRIX_LR = 0.001/MATRIX_LR = 1e6/' train.py && echo 'MATRIX_LR 0.001 -> 1e6'"
    r = cli("run", "--home", home, "-n", 1, "--proposer", "command", "--proposer-command", f"bash {ADAPTERS / 'agent.sh'}",
            env={"AGENT_CMD": sed})
    assert r.returncode == 0, r.stderr
    crash = local_runs(home)[-1]
    assert crash["status"] == "crash" and "loss diverged" in crash["reason"] and "FAIL" in crash["reason"]
    assert crash["description"] == "MATRIX_LR 0.001 -> 1e6"
    assert tsv_rows(home)[-1]["status"] == "crash" and tsv_rows(home)[-1]["val_bpb"] == "0.000000"
    # autoresearch's analysis reads it
    result = analyze(home / "results.tsv", tmp_path / "progress.png")
    assert result["total"] == 4 and result["baseline_bpb"] == pytest.approx(float(rows[0]["val_bpb"]))
    assert (tmp_path / "progress.png").stat().st_size > 0


@pytest.mark.slow
def test_coding_agents_through_the_adapters(tmp_path):
    """Claude Code, Codex CLI, aider and the generic adapter, each one-shot in a scratch copy: code and
    constant edits arrive; git, results.tsv, caches and harness edits of the agent never do."""
    folder = autoresearch_folder()
    home = init_node(tmp_path, "node", folder, proposer="command", proposer_command=f"bash {ADAPTERS / 'agent.sh'}")

    def propose_with(adapter: str, **env) -> dict:
        r = cli("run", "--home", home, "-n", 1, "--proposer-command", f"bash {ADAPTERS / adapter}",
                env=agent_env(**env))
        assert r.returncode == 0, r.stderr[-3000:]
        return local_runs(home)[-1]

    run = propose_with("claude_code.sh", FAKE_EDIT="lr10")          # a code edit that helps a lot
    assert run["kind"] == "experiment" and run["description"] == "scale the matrix learning rate by 10 in setup_optimizer"
    assert run["status"] == "kept", run
    run = propose_with("codex.sh", FAKE_EDIT="matrix")              # a constant edit
    assert run["description"] == "MATRIX_LR 0.001 -> 0.01" and run["status"] in ("kept", "discarded")
    run = propose_with("aider.sh", FAKE_EDIT="note")                # its last reply line, from its history
    assert run["description"] == "record that aider was here"
    run = propose_with("agent.sh", AGENT_CLI="claude", FAKE_EDIT="note", FAKE_LAST_LINE="")
    assert run["description"].startswith("code; +2 -0 lines"), run["description"]  # the node's summary
    # nothing the agents did besides train.py reached the node
    repo = pygit2.Repository(str(home / "repo"))
    refs = set(repo.references)
    assert all(r == "refs/heads/main" or r.startswith("refs/p2p/") for r in refs), refs
    assert not any((home / "repo" / name).exists() for name in ("results.tsv", ".claude.history.md", "__pycache__"))
    genesis_prepare = (folder / "prepare.py").read_bytes()
    for ref in refs:
        assert repo.revparse_single(ref).peel(pygit2.Tree)["prepare.py"].data == genesis_prepare
    assert not list(home.glob("agent-*"))  # scratch copies are removed
    rows = tsv_rows(home)
    assert [row["status"] for row in rows][:2] == ["keep", "keep"] and len(rows) == 5
    assert analyze(home / "results.tsv", tmp_path / "p.png")["counts"]["KEEP"] >= 2


def test_harness_budget_declarations():
    from p2p_research.home import HomeError
    from p2p_research.research.ids import Budget
    from p2p_research.research.io.context import harness_budget, resolve_budget

    ar = harness_budget(b"MAX_SEQ_LEN = 2048\nTIME_BUDGET = 5 * 60  # seconds\n")
    assert ar.budget == Budget(seconds=300.0) and not ar.overridable and ar.source == "TIME_BUDGET = 5 * 60 in prepare.py"
    ours = harness_budget(b"DEFAULT_BUDGET_TOKENS = 500_000\nimport os\nos.environ.get('P2P_BUDGET_TOKENS')\n")
    assert ours.budget == Budget(tokens=500_000) and ours.overridable
    assert harness_budget(b"TIME_BUDGET = int(300)\n") is None  # a call: not a declaration
    from p2p_research.config import NodeConfig

    cfg = NodeConfig()
    assert resolve_budget(cfg, b"TIME_BUDGET = 300\n") == (Budget(seconds=300.0), "TIME_BUDGET = 300 in prepare.py")
    cfg.research.budget_seconds = 300.0  # the same budget, said twice: fine
    assert resolve_budget(cfg, b"TIME_BUDGET = 300\n")[0] == Budget(seconds=300.0)
    cfg.research.budget_seconds = 60.0
    with pytest.raises(HomeError, match="fixes its budget"):
        resolve_budget(cfg, b"TIME_BUDGET = 300\n")
    with pytest.raises(HomeError, match="declares no budget"):
        resolve_budget(NodeConfig(), b"X = 1\n")


def test_hardware_class_names_the_accelerator():
    from p2p_research.research.io.hardware import cpu_string, describe_gpus, hardware_class, visible

    gpus = [("0", "GPU-aaaa", "NVIDIA H100 80GB HBM3"), ("1", "GPU-bbbb", "NVIDIA H100 80GB HBM3"),
            ("2", "GPU-cccc", "NVIDIA A100-SXM4-40GB")]
    assert describe_gpus(visible(gpus, None)) == "NVIDIA A100-SXM4-40GB x1 + NVIDIA H100 80GB HBM3 x2"
    assert describe_gpus(visible(gpus, "1")) == "NVIDIA H100 80GB HBM3 x1"
    assert describe_gpus(visible(gpus, "GPU-cc,0")) == "NVIDIA A100-SXM4-40GB x1 + NVIDIA H100 80GB HBM3 x1"
    assert visible(gpus, "7,0") == [] and visible(gpus, "") == []  # CUDA stops at the first invalid entry
    assert hardware_class("cpu") == cpu_string()
    if not shutil.which("nvidia-smi"):
        assert hardware_class("auto") == cpu_string()  # CPU protocol ids stay as they were


@pytest.mark.slow
def test_a_code_edit_travels_where_runs_are_sandboxed(tmp_path):
    """A's agent edits code (a real gain). B (sandbox on, trust policy `sandboxed`) holds out a
    private shard, so it re-runs the edit in the sandbox without the validation shard, measures it
    with its own harness on both shards, confirms it and adopts it; B's results.tsv shows the adoption
    as a keep naming A, and autoresearch's analysis plots it. C (sandbox forced off) cannot measure
    runs apart from their code and rejects the edit as code. (Two nodes sharing a constant edit, the
    codex adapter and the solo loop's rows are the other tests' here.)"""
    from p2p_research.research.io.sandbox import detect

    if not detect().available:
        pytest.skip(f"no sandbox here: {detect().reason}")
    folder = autoresearch_folder()
    a_home = init_node(tmp_path, "a", folder, tolerance=1.5, proposer="command",
                       proposer_command=f"bash {ADAPTERS / 'claude_code.sh'}")
    b_home = init_node(tmp_path, "b", folder, tolerance=1.5)
    c_home = init_node(tmp_path, "c", folder, tolerance=1.5)
    h = NodeHome(c_home)
    cfg = h.load_config()
    cfg.sandbox.mode = "off"
    h.write_config(cfg)
    a = Daemon(a_home, "-n", "1", env=agent_env(FAKE_EDIT="lr10")).start(timeout=120)
    daemons = [a]
    try:
        wait_for(lambda: any(e["kind"] == "experiment" and e["status"] == "kept" for e in a.json("experiments")),
                 240, what="A keeps its agent's code edit")
        exp = next(e["id"] for e in a.json("experiments") if e["kind"] == "experiment" and e["status"] == "kept")
        b = Daemon(b_home, "-n", "0", "--bootstrap", a.addrs[0]).start(timeout=120)  # they only judge A's edit
        c = Daemon(c_home, "-n", "0", "--bootstrap", a.addrs[0]).start(timeout=120)
        daemons += [b, c]
        c_status = c.json("status")
        assert c_status["trust_policy"] == "constants" and "turned off" in c_status["sandbox"]
        wait_for(lambda: any(step["found_by"] == a.peer_id for step in b.json("status")["baseline"]["lineage"]),
                 300, what="B adopts A's code edit")
        assert b.json("status")["peers_code"].startswith("any change")
        b_run = [r for r in b.json("show", exp[:12])["runs"] if r["origin"] == "local"]
        assert b_run and b_run[-1]["status"] == "confirmed", b_run
        metrics = b_run[-1]["metrics"]
        assert metrics["measured_by"] == "harness" and "private_bpb" in metrics, metrics
        # B kept nothing of its own (-n 0): its rows are the genesis and A's change, a keep naming A
        rows = tsv_rows(b_home)
        assert rows[0]["description"] == "baseline measurement", rows
        adopted = [row for row in rows if "adopted from " + a.peer_id in row["description"]]
        assert adopted and adopted[0]["status"] == "keep" and not adopted[0]["description"].startswith(" ("), rows
        result = analyze(b_home / "results.tsv", tmp_path / "b.png")
        assert result["best_bpb"] <= float(adopted[0]["val_bpb"]) and (tmp_path / "b.png").stat().st_size > 0
        assert any(a.peer_id in d for d in result["kept_descriptions"]), result["kept_descriptions"]
        wait_for(lambda: c.json("status")["swarm_stats"]["trust_rejected"] >= 1, 240,
                 what="C holds the code edit to constants")
        peer_run = [r for r in c.json("show", exp[:12])["runs"] if r["origin"] == "peer"][0]
        assert "rejected by trust policy" in peer_run["reason"] and "changes code" in peer_run["reason"]
        assert all(step["found_by"] != a.peer_id for step in c.json("status")["baseline"]["lineage"])
    finally:
        for d in daemons:
            d.stop()
        for d in daemons:
            d.kill()


def test_init_finds_the_harness_data_folder_for_the_sandbox(tmp_path):
    from p2p_research.research.io.home_init import harness_data_dirs

    src = b'CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")\nX = ".cache"\n'
    assert harness_data_dirs(src) == ["~/.cache/autoresearch"]
    assert harness_data_dirs(b"def cache_dir(): return Path.home() / '.cache' / 'p2p-research'\n") == []
    folder = tmp_path / "ar"
    shutil.copytree(FIXTURE, folder)
    prep = folder / "prepare.py"
    prep.write_text(prep.read_text() + '\nDATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")\n')
    info = json.loads(cli("init", "--home", tmp_path / "node", "--target", folder, "--json", check=True).stdout)
    assert info["sandbox_read_only"] == ["~/.cache/autoresearch-fixture", "~/.cache/autoresearch"]


def test_what_cannot_run_fails_before_the_first_run_with_its_fix(tmp_path):
    """autoresearch's folder under an interpreter without its `kernels` module: doctor names it, and
    research stops before any run with one line and the fix (it crashed twice and left two rows)."""
    folder = autoresearch_folder()
    home = init_node(tmp_path, "n", folder)
    h = NodeHome(home)
    cfg = h.load_config()
    cfg.research.train_command = f"{sys.executable} train.py"  # the node's own: no `kernels` there
    h.write_config(cfg)
    r = cli("doctor", "--home", home)
    assert "imports kernels" in r.stdout and "uv sync" in r.stdout, r.stdout
    r = cli("run", "--home", home, "-n", 1, timeout=120)
    assert r.returncode == 1 and "imports kernels" in r.stderr and "fix:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (home / "results.tsv").exists() or not tsv_rows(home)  # no crash rows: nothing ran
    # with its own environment the same folder passes
    cfg.research.train_command = f"{folder / '.venv' / 'bin' / 'python'} train.py"
    h.write_config(cfg)
    assert "pre-flight" in cli("doctor", "--home", home).stdout


def test_preflight_rules(tmp_path):
    from p2p_research.research import loop as L
    from p2p_research.research.io import preflight as P

    src = {"train.py": b"import os\nimport torch\nfrom kernels import get_kernel\nimport prepare\n"
                       b"try:\n    import wandb\nexcept ImportError:\n    wandb = None\n"
                       b"if True:\n    import numpy.linalg\n"}
    assert P.imported_modules(src, {"prepare", "train"}) == ["kernels", "numpy", "os", "torch"]
    assert P.needs_cuda({"train.py": b'device = torch.device("cuda")\n'})
    assert not P.needs_cuda({"train.py": b'device = "cuda" if torch.cuda.is_available() else "cpu"\n'})
    ar_prepare = b'CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "autoresearch")\n'
    p = P.data_problem(ar_prepare, home=tmp_path)
    assert p is not None and "uv run prepare.py" in p.fix
    (tmp_path / ".cache/autoresearch/data").mkdir(parents=True)
    (tmp_path / ".cache/autoresearch/data/shard_00000.parquet").write_bytes(b"x")
    (tmp_path / ".cache/autoresearch/tokenizer").mkdir()
    assert P.data_problem(ar_prepare, home=tmp_path) is None
    assert P.data_problem(b"print('no cache here')", home=tmp_path) is None
    assert "uv sync" in P.will_repeat("exit code 1: ModuleNotFoundError: No module named 'kernels'")
    assert P.will_repeat("AssertionError: Torch not compiled with CUDA enabled") is not None
    assert P.will_repeat("out of memory (killed by signal 9)") is None
    # a failure that will repeat ends research at once, with the fix; another is retried
    m = L.ResearchLoop("g", None)
    m.next_action()
    m.handle(L.BaselineMeasured("g", None, "No module named 'kernels'", "uv sync"))
    d = m.next_action()
    assert isinstance(d, L.Done) and d.error and "fix: uv sync" in d.reason
    m = L.ResearchLoop("g", None)
    m.next_action()
    m.handle(L.BaselineMeasured("g", None, "out of memory"))
    assert isinstance(m.next_action(), L.MeasureBaseline)
