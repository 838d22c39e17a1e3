"""Dedup for code: edits that differ only in formatting, comments or docstrings are one experiment
(research/semantic.py), in the ledger, in claims (gossip and DHT) and for the proposer."""

from __future__ import annotations

import pytest
from autoresearch_helpers import ADAPTERS, agent_env, autoresearch_folder, cli, init_node, local_runs
from daemon_helpers import Daemon, wait_for

from p2p_research.research.semantic import semantic_id
from p2p_research.store.ledger import Ledger
from p2p_research.wire import Claim, decode

BASE = b'''"""A model."""
LR = 0.01  # learning rate


def step(w, g):
    """One step."""
    return w - LR * g
'''


@pytest.mark.parametrize("variant", [
    BASE.replace(b"w - LR * g", b"(w - (LR*g))"),
    BASE.replace(b"  # learning rate", b"").replace(b'"""One step."""', b"# one step"),
    BASE.replace(b'"""A model."""', b"'''Another docstring.'''") + b"\n\n# trailing comment\n",
    BASE.replace(b"LR = 0.01", b"LR = 1e-2"),
])
def test_formatting_comments_and_docstrings_do_not_change_the_code_key(variant):
    assert semantic_id("p", {"train.py": variant, "prepare.py": b"x"}) == semantic_id("p", {"train.py": BASE, "prepare.py": b"x"})


@pytest.mark.parametrize("variant", [
    BASE.replace(b"w - LR * g", b"w + LR * g"),
    BASE.replace(b"LR = 0.01", b"LR = 0.02"),
    BASE + b"X = 1\n",
])
def test_real_changes_do(variant):
    assert semantic_id("p", {"train.py": variant}) != semantic_id("p", {"train.py": BASE})


def test_the_protocol_and_other_files_count():
    files = {"train.py": BASE, "prepare.py": b"x"}
    assert semantic_id("p", files) != semantic_id("q", files)
    assert semantic_id("p", files) != semantic_id("p", {**files, "prepare.py": b"y"})
    assert semantic_id("p", {"train.py": b"def (:"}) != semantic_id("p", {"train.py": b"def  (:"})  # unparsable: bytes


def test_ledger_knows_code_from_experiments_and_live_claims(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    s1, s2 = "a" * 40, "b" * 40
    led.add_experiment("1" * 40, "p", "0" * 40, "t" * 40, "c" * 40, "d", "local", semantic_id=s1)
    assert led.same_code(s1) == "1" * 40 and led.same_code(s2) is None and led.same_code("") is None
    led.add_claim("2" * 40, "peer", "p", "0" * 40, lease_until=100.0, description="", ts=1.0, semantic_id=s2)
    assert led.same_code(s2, active_at=50.0) == "2" * 40
    assert led.same_code(s2, active_at=150.0) is None  # the lease ran out
    led.close()


def test_claims_carry_the_code_key_and_older_claims_still_decode():
    c = Claim(exp_id="1" * 40, protocol_id="2" * 40, parent="3" * 40, peer="12D3KooWGzh6iHnEqBCTUWy6QGJ1bnHKbo6hzUYZ4n6sYJRZDhC2",
              lease_until=10.0, description="d", ts=1.0, semantic_id="4" * 40)
    assert decode(c.to_wire()).semantic_id == "4" * 40
    old = Claim(**{**c.__dict__, "semantic_id": ""})
    assert b"semantic_id" not in old.to_wire() and decode(old.to_wire()).semantic_id == ""


@pytest.mark.slow
def test_an_agent_rewording_a_known_edit_spends_no_run(tmp_path):
    folder = autoresearch_folder()
    home = init_node(tmp_path, "node", folder, proposer="command", proposer_command=f"bash {ADAPTERS / 'codex.sh'}")
    r = cli("run", "--home", home, "-n", 1, env=agent_env(FAKE_EDIT="boom"))
    assert r.returncode == 0, r.stderr[-2000:]
    runs = len(local_runs(home))
    assert local_runs(home)[-1]["status"] == "crash"  # the baseline stays: the copy applies to it
    r = cli("run", "--home", home, "-n", 1, env=agent_env(FAKE_EDIT="boomfmt"))
    assert "already knows" in r.stderr, r.stderr[-2000:]
    assert len(local_runs(home)) == runs  # no run was spent on it


@pytest.mark.slow
def test_a_peer_claim_on_the_same_code_stops_a_reworded_copy(tmp_path):
    """A's agent runs a slow edit; B's agent proposes the same program spelt differently while A's
    claim is live: B skips it, by the code key A's claim carries."""
    folder = autoresearch_folder()
    a_home = init_node(tmp_path, "a", folder, proposer="command", proposer_command=f"bash {ADAPTERS / 'codex.sh'}")
    b_home = init_node(tmp_path, "b", folder, proposer="command", proposer_command=f"bash {ADAPTERS / 'codex.sh'}")
    daemons = []
    try:
        a = Daemon(a_home, "-n", "1", env=agent_env(FAKE_EDIT="slow")).start(timeout=120)
        daemons.append(a)
        wait_for(lambda: (a.json("status").get("current") or {}).get("phase") == "training"
                 and a.json("status")["current"]["description"].startswith("wait"), 90, 0.5, what="A runs its slow edit")
        b = Daemon(b_home, "-n", "1", "--bootstrap", a.addrs[0], env=agent_env(FAKE_EDIT="slowfmt")).start(timeout=120)
        daemons.append(b)
        wait_for(lambda: b.json("status")["dedup"]["same_code"] >= 1, 60, 0.5, what="B skips the reworded copy")
        assert not [r for r in local_runs(b_home) if r["kind"] == "experiment" and "wait" in r["description"]]
    finally:
        for d in daemons:
            d.stop()
        for d in daemons:
            d.kill()
