"""Peers' code against real daemons that train for real, where the harness owns the number.

An honest code edit travels: A's agent changes train.py's code, B re-runs it, B's harness measures
the handed-over model, B confirms and adopts it.

A hostile peer publishes lying train.py code:

The victim V is a daemon (its own OS process) with the default target, real torch training on a tiny
budget, the sandbox, and `verification.policy = always`. The adversary (tests/adversary.py) is a real
py-libp2p host in the test process: it joins V's swarm and publishes signed, well-formed results whose
commits change train.py's code, each claiming a great val_bpb (one of them honestly: it trained
sixteen budgets long, which V sees from the CPU its re-run took). Before the harness owned the number,
V's re-run of each "confirmed" it and V adopted it. Now V re-runs each in the sandbox, its own
harness measures (or fails to get) the model, and V refutes every one, adopts none, stays up, and
the adversary's reputation on V shows the refutations.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
import trio
from adversary import adversary, fresh_keys, pid_of, receipt, result
from conftest import init_small
from daemon_helpers import Daemon, wait_for

from p2p_research.daemon.messages import commit_objects
from p2p_research.research.ids import experiment_id
from p2p_research.research.io.workspace import Workspace

pytestmark = pytest.mark.slow

BUDGET_TOKENS = 16_384

LIES = {
    # a fabricated summary, no training, no evaluation
    "prints a summary without training": (
        lambda src: src.replace(b"def main():", b"def main():\n    print('---\\nval_bpb: 0.200000')\n    return\n\n\ndef _unused():", 1),
        0.20),
    # trains, then skips the harness's evaluation and prints a value of its choosing
    "replaces the evaluation with a constant": (
        lambda src: src.replace(b"val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)", b"val_bpb = 0.30", 1),
        0.30),
    # hands its model over (the harness measures it), then prints a value of its choosing; patching
    # torch's cross-entropy before the evaluation no longer changes anything: the run does not evaluate
    "hands over, then prints another value": (
        lambda src: src.replace(b"val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)",
                                b"F.cross_entropy = lambda *a, **k: torch.tensor(0.01) * a[0].new_ones(()).sum()\n"
                                b"    val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN) * 0 + 0.0145", 1),
        0.0145),
    # trains sixteen budgets long, hands its model over and reports the harness's honest value: the
    # number is true, the budget is not (the verifier counts the compute it took from outside)
    "trains sixteen budgets long": (
        lambda src: src.replace(b"    budget = get_budget()\n",
                                b"    budget = get_budget()\n    budget = type(budget)(tokens=budget.tokens * 16, seconds=None)\n", 1),
        1.2),
}


def victim_home(path: Path, **research):
    home = init_small(path)
    cfg = home.load_config()
    cfg.research.budget_tokens = BUDGET_TOKENS
    cfg.research.genesis = "each"
    cfg.research.noise_runs = 0  # the margin does not matter here; two more runs per node would
    for k, v in research.items():
        setattr(cfg.research, k, v)
    cfg.verification.policy = "always"
    home.write_config(cfg)
    return home


# the agent's edit: a learning rate that an 8-step budget rewards, and a line of code (not a constant)
AGENT_SCRIPT = (
    "import re\n"
    "src = open('train.py').read()\n"
    "src = re.sub(r'^LEARNING_RATE = [0-9.eE+-]+', 'LEARNING_RATE = 0.01', src, count=1, flags=re.MULTILINE)\n"
    "src = src.replace('def main():', 'def main():\\n    torch.set_printoptions(precision=4)  # code, not a constant', 1)\n"
    "open('train.py', 'w').write(src)\n"
    "print('LEARNING_RATE 0.002 -> 0.01, plus a line of code')\n")


# B's own experiment: a learning rate too small to learn anything in the budget. With the builtin
# proposer B's one experiment sometimes beat A's edit (SEQ_LEN 128 -> 32 gave 4.57 against 5.02), and
# then B rightly never adopted A's code
WORSE_SCRIPT = (
    "import re\n"
    "src = open('train.py').read()\n"
    "src = re.sub(r'^LEARNING_RATE = [0-9.eE+-]+', 'LEARNING_RATE = 0.00001', src, count=1, flags=re.MULTILINE)\n"
    "open('train.py', 'w').write(src)\n"
    "print('LEARNING_RATE 0.002 -> 0.00001')\n")


def test_an_honest_code_edit_is_measured_by_the_verifier_s_harness_and_adopted(tmp_path):
    agent, worse = tmp_path / "agent.py", tmp_path / "worse.py"
    agent.write_text(AGENT_SCRIPT)
    worse.write_text(WORSE_SCRIPT)
    a = Daemon(victim_home(tmp_path / "a", proposer="command", proposer_command=f"{sys.executable} {agent}").path,
               "-n", "1").start(timeout=120)
    daemons = [a]
    try:
        b = Daemon(victim_home(tmp_path / "b", proposer="command", proposer_command=f"{sys.executable} {worse}").path,
                   "-n", "0", "--bootstrap", a.addrs[0]).start(timeout=120)  # B only verifies and adopts
        daemons.append(b)
        # A's own (agent) experiment: B's builtin one reaches A's list too, and may finish first
        wait_for(lambda: any(e["kind"] == "experiment" and e["origin"] == "local"
                             and e["status"] in ("kept", "discarded", "crash")
                             for e in a.json("experiments")), 300, 2.0, what="A's agent experiment")
        kept = [e for e in a.json("experiments") if e["kind"] == "experiment" and e["origin"] == "local"
                and e["status"] == "kept"]
        assert kept, a.json("experiments")
        wait_for(lambda: any(step["found_by"] == a.peer_id for step in b.json("status")["baseline"]["lineage"]),
                 300, 2.0, what="B adopts A's code edit")
        shown = b.json("show", kept[0]["id"][:12])
        assert "torch.set_printoptions" in shown["diff"]
        local = [r for r in shown["runs"] if r["origin"] == "local" and r["kind"] == "verification"]
        assert local and local[0]["status"] == "confirmed", shown["runs"]
        assert local[0]["metrics"]["measured_by"] == "harness" and "private_bpb" in local[0]["metrics"], local[0]
    finally:
        for d in daemons:
            d.stop()
        for d in daemons:
            d.kill()


def lying_commit(root: Path, name: str) -> tuple[Workspace, str]:
    home = init_small(root / f"liar-{abs(hash(name)) % 10**8}")
    ws = Workspace(home.repo)
    train = ws.files_of(ws.baseline)["train.py"]
    new = LIES[name][0](train)
    assert new != train, name
    return ws, ws.commit_experiment(ws.baseline, {"train.py": new}, name, "0" * 40)


def test_lying_code_from_a_peer_is_refuted_by_the_harness_and_never_adopted(tmp_path):
    v = Daemon(victim_home(tmp_path / "v").path, "-n", "0").start(timeout=120)
    try:
        wait_for(lambda: v.json("status")["baseline"]["val_bpb"] is not None, 240, 1.0, what="V measures its genesis")
        s0 = v.json("status")
        assert s0["peers_code"].startswith("any change"), s0["peers_code"]
        proto, swarm = s0["protocol_id"], s0["swarm"]

        async def attack() -> list[str]:
            liars = fresh_keys(len(LIES))  # one key each: a key refuted twice is ignored after that
            async with adversary() as adv:
                await adv.join(v.addrs[0], swarm)
                for kp, (name, (_, value)) in zip(liars, LIES.items(), strict=True):
                    ws, commit = lying_commit(tmp_path, name)
                    objs, _, total = commit_objects(ws, commit, deltas=False)
                    r = receipt(kp, protocol_id=proto, exp_id=experiment_id(proto, ws.tree_of(commit)),
                                parent=ws.parent_of(commit), commit=commit, tree=ws.tree_of(commit), value=value,
                                description=name)
                    await adv.publish_as(kp, result(kp, r, objs, total).to_wire())
                    await trio.sleep(1.0)

                def refuted_all() -> bool:
                    st = v.json("status")["swarm_stats"]
                    return st["verified_refuted"] - s0["swarm_stats"]["verified_refuted"] >= len(LIES)

                await trio.to_thread.run_sync(lambda: wait_for(refuted_all, 420, 2.0, what="V refutes every lie"))
            return [pid_of(k) for k in liars]

        liars = trio.run(attack)
        st = v.json("status")
        assert v.proc.poll() is None and st["swarm_stats"]["adopted"] == s0["swarm_stats"]["adopted"]
        assert all(step["found_by"] not in liars for step in st["baseline"]["lineage"])
        assert st["baseline"]["val_bpb"] > 1.0  # none of 0.2, 0.3, 0.0145, and not the long run's
        db = sqlite3.connect(f"file:{v.home / 'ledger.sqlite'}?mode=ro", uri=True)
        rows = db.execute("SELECT peer, status, reason FROM runs WHERE origin='local' AND kind='verification'").fetchall()
        reputation = json.loads(db.execute("SELECT value FROM meta WHERE key='reputation'").fetchone()[0])
        db.close()
        for liar in liars:  # each liar's reputation on V shows the refutation
            assert reputation[liar]["refuted"] >= 1 and reputation[liar]["confirmed"] == 0, reputation.get(liar)
        reasons = [reason for _, status, reason in rows if status == "refuted"]
        assert len(reasons) >= len(LIES), rows
        assert any("cannot measure this code's model" in r for r in reasons), reasons
        assert any("false report" in r for r in reasons), reasons
        # the long run is refused from outside: by its compute, or (on a loaded machine) by its time limit
        assert any("trained past the budget" in r or "time limit exceeded" in r for r in reasons), reasons
    finally:
        v.stop()
        v.kill()
