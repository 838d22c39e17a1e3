"""A hostile peer publishes lying train.py code to a real daemon that trains for real.

The victim V is a daemon (its own OS process) with the default target, real torch training on a tiny
budget, the sandbox, and `verification.policy = always`. The adversary (tests/adversary.py) is a real
py-libp2p host in the test process: it joins V's swarm and publishes signed, well-formed results whose
commits change train.py's code, each claiming a great val_bpb. Before the harness owned the number,
V's re-run of each "confirmed" it and V adopted it. Now V re-runs each in the sandbox, its own
harness measures (or fails to get) the model, and V refutes every one, adopts none, stays up, and
the adversary's reputation on V shows the refutations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from adversary import adversary, receipt, result
from daemon_helpers import Daemon, wait_for

from p2p_research.daemon.announce import commit_objects
from p2p_research.research.ids import experiment_id
from p2p_research.research.init import init_home
from p2p_research.research.workspace import Workspace

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
    # calls the harness's evaluation but with torch's cross-entropy patched to almost nothing
    "patches cross_entropy before the evaluation": (
        lambda src: src.replace(b"val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)",
                                b"F.cross_entropy = lambda *a, **k: torch.tensor(0.01) * a[0].new_ones(()).sum()\n"
                                b"    val_bpb = evaluate_bpb(model, device, max_seq_len=SEQ_LEN)", 1),
        0.0145),
}


def victim_home(path: Path):
    home = init_home(path)
    cfg = home.load_config()
    cfg.research.budget_tokens = BUDGET_TOKENS
    cfg.research.genesis = "each"
    cfg.verification.policy = "always"
    home.write_config(cfg)
    return home


def lying_commit(root: Path, name: str) -> tuple[Workspace, str]:
    home = init_home(root / f"liar-{abs(hash(name)) % 10**8}")
    ws = Workspace(home.repo)
    train = ws.files_of(ws.baseline)["train.py"]
    new = LIES[name][0](train)
    assert new != train, name
    return ws, ws.commit_experiment(ws.baseline, {"train.py": new}, name, "0" * 40)


def test_lying_code_from_a_peer_is_refuted_by_the_harness_and_never_adopted(tmp_path):
    v = Daemon(victim_home(tmp_path / "v").path, "-n", "1").start(timeout=120)
    try:
        wait_for(lambda: v.json("status")["baseline"]["val_bpb"] is not None, 240, 1.0, what="V measures its genesis")
        s0 = v.json("status")
        assert s0["peers_code"].startswith("any change"), s0["peers_code"]
        proto, swarm = s0["protocol_id"], s0["swarm"]

        async def attack() -> dict:
            async with adversary() as adv:
                await adv.join(v.addrs[0], swarm)
                for name, (_, value) in LIES.items():
                    ws, commit = lying_commit(tmp_path, name)
                    objs, _, total = commit_objects(ws, commit, deltas=False)
                    r = receipt(adv.kp, protocol_id=proto, exp_id=experiment_id(proto, ws.tree_of(commit)),
                                parent=ws.parent_of(commit), commit=commit, tree=ws.tree_of(commit), value=value,
                                description=name)
                    await adv.publish(result(adv.kp, r, objs, total).to_wire())
                    await trio.sleep(0.5)

                def refuted_all() -> bool:
                    st = v.json("status")["swarm_stats"]
                    return st["verified_refuted"] - s0["swarm_stats"]["verified_refuted"] >= len(LIES)

                await trio.to_thread.run_sync(lambda: wait_for(refuted_all, 420, 2.0, what="V refutes every lie"))
                mine = [p for p in v.json("peers") if p["peer_id"] == adv.peer_id]
                return {"peer_id": adv.peer_id, "reputation": mine[0].get("reputation") if mine else None}

        seen = trio.run(attack)
        st = v.json("status")
        assert v.proc.poll() is None and st["swarm_stats"]["adopted"] == s0["swarm_stats"]["adopted"]
        assert all(step["found_by"] != seen["peer_id"] for step in st["baseline"]["lineage"])
        assert st["baseline"]["val_bpb"] > 1.0  # none of 0.2, 0.3, 0.0145
        rep = seen["reputation"]
        assert rep is not None and rep["refuted"] >= len(LIES) and rep["confirmed"] == 0, rep
        # each refutation says why, in V's ledger
        verifications = [r for e in v.json("experiments", "--origin", "peer") for r in [e]
                         if e["peer"] == seen["peer_id"]]
        assert len(verifications) >= len(LIES)
        reasons = []
        for e in verifications:
            runs = v.json("show", e["id"][:12])["runs"]
            reasons += [r["reason"] for r in runs if r["origin"] == "local" and r["kind"] == "verification"]
        assert any("cannot measure this code's model" in r for r in reasons), reasons
        assert any("false report" in r for r in reasons), reasons
    finally:
        v.stop()
        v.kill()
