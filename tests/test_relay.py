"""Relays serve every swarm: a `--no-research` node needs no target or budget of its peers' choosing.

Real daemons on loopback: a relay started with nothing but `--no-research` bootstraps two research
nodes whose budget is not the default, learns their swarm from their subscriptions, forwards and
stores their results, DHT records and objects, and serves all of it to a late joiner (started the same
way, without a budget) after the research nodes have gone.
"""

from __future__ import annotations

import pygit2
import pytest
from daemon_helpers import Daemon, stop_all, surrogate_home, wait_for

from p2p_research.net.topics import (
    MAX_SWARMS,
    TopicFilter,
    swarm_peer_counts,
    swarm_to_replace,
    swarm_weights,
    swarms_to_join,
    swarms_to_leave,
    topic_names,
)
from p2p_research.research.io.home_init import init_home


def test_topic_filter_admits_swarm_topics_only_when_open():
    exp, board = topic_names("ab12")
    closed = TopicFilter(joined={exp})
    assert exp in closed and board not in closed and topic_names("ff")[0] not in closed
    relay = TopicFilter(open=True)
    assert exp in relay and board in relay
    for junk in ("/p2p-research/XYZ/exp/1", "/p2p-research/ab12/exp/2", "/other/ab12/exp/1", "", 5, None,
                 "/p2p-research/" + "a" * 65 + "/exp/1", "/p2p-research/ab12/exp/1\n"):
        assert junk not in relay


def test_swarms_to_join_most_used_first_within_the_cap():
    seen = {"a": 1.0, "b": 5.0, "c": 0.0, "d": 3.0}
    assert swarms_to_join([], seen) == ["b", "d", "a"]           # nobody uses c
    assert swarms_to_join(["b"], seen) == ["d", "a"]
    assert swarms_to_join(["x", "y"], seen, cap=3) == ["b"]
    assert swarms_to_join(["x", "y", "z"], seen, cap=3) == []


def test_a_peer_announcing_many_swarms_weighs_little():
    topics = {topic_names(f"{i:04x}")[0]: {"hostile"} for i in range(100)}
    topics[topic_names("beef")[0]] = {"honest", "relay"}
    topics[topic_names("cafe")[0]] = {"relay"}
    w = swarm_weights(topics)
    assert w["beef"] == pytest.approx(1.5) and w["cafe"] == pytest.approx(0.5) and w["0001"] == pytest.approx(0.01)
    # at the cap, full of the hostile peer's swarms: the real one takes a place, one swap at a time
    joined = [f"{i:04x}" for i in range(MAX_SWARMS)]
    out, into = swarm_to_replace(joined, w)
    assert into == "beef" and out in joined
    assert swarm_to_replace(joined, w, keep=joined) is None      # the own swarm is never left
    assert swarm_to_replace([*joined[:-1], "beef"], {"beef": 1.0, "cafe": 1.5} | dict.fromkeys(joined, 1.0)) is None


def test_swarms_to_leave_idle_ones_never_the_own():
    joined = ["own", "idle", "busy", "fresh"]
    seen = {"busy": 2}
    idle_since = {"own": 0.0, "idle": 0.0, "busy": 0.0, "fresh": 950.0}
    assert swarms_to_leave(joined, seen, idle_since, now=1000.0, keep=["own"], idle_s=600) == ["idle"]


def test_swarm_peer_counts_reads_experiment_topics():
    exp, board = topic_names("ab12")
    counts = swarm_peer_counts({exp: {"p1", "p2"}, board: {"p1"}, "/other": {"p3"}})
    assert counts == {"ab12": 2}


@pytest.mark.slow
def test_a_relay_without_a_budget_serves_a_swarm_with_another_budget_to_a_late_joiner(tmp_path):
    relay_home = init_home(tmp_path / "relay")          # the default budget; it must not matter
    homes = [surrogate_home(tmp_path / n, seed, cost=0.3) for n, seed in (("a", 1), ("b", 2))]
    for h in homes:
        cfg = h.load_config()
        cfg.research.budget_tokens = 20000
        h.write_config(cfg)
    relay = Daemon(relay_home.path, "--no-research").start()
    daemons = [relay]
    try:
        a = Daemon(homes[0].path, "--bootstrap", relay.addrs[0], "-n", "4").start()
        b = Daemon(homes[1].path, "--bootstrap", relay.addrs[0], "-n", "4").start()
        daemons += [a, b]
        proto = a.json("status")["protocol_id"]
        swarm = a.json("status")["swarm"]
        assert proto != relay.json("status")["protocol_id"]   # the relay's own home does not decide

        # the relay joins the research nodes' swarm and says so
        def served():
            sws = {s["swarm"]: s for s in relay.json("status")["swarms"]}
            return sws.get(swarm) if sws.get(swarm, {}).get("peers", 0) >= 2 else None
        wait_for(served, 60, what="the relay serves the research nodes' swarm")

        wait_for(lambda: all(d.json("status")["research"].startswith("done") for d in (a, b)), 180,
                 what="both research nodes finish")
        found = {e["id"]: e for d in (a, b) for e in d.json("experiments") if e["origin"] == "local"
                 and e["kind"] == "experiment"}
        assert found
        # everything the swarm tried is stored at the relay (gossip, then anti-entropy)
        wait_for(lambda: set(found) <= {e["id"] for e in relay.json("experiments")}, 90,
                 what="the relay stores every result of the swarm")
        st = relay.json("status")
        assert st["role"] == "relay" and st["protocol_note"] == "" and st["intake"]["rejected_by"].get("other_protocol", 0) == 0
        (sw,) = [s for s in st["swarms"] if s["swarm"] == swarm]
        (p,) = sw["protocols"]
        assert p["protocol"] == proto and p["budget"] == "20000 tokens" and p["results"] >= len(found)
        assert st["dht"]["records"] > 0
        table = " ".join(relay.cli("status").stdout.split())
        assert "serves every swarm" in table and swarm in table and "20000 tokens" in table
        assert {p["peer_id"]: p["role"] for p in a.json("peers")}[relay.peer_id] == "relay"
        assert "relay" in a.cli("peers").stdout
        # the research nodes see no "another protocol" warning about the relay
        assert a.json("status")["protocol_note"] == ""
        kept = [e for e in found.values() if e["status"] == "kept"]
        relay_repo = pygit2.Repository(str(relay_home.repo))
        for e in kept:  # the relay can serve only what it holds: let it finish fetching before they go
            wait_for(lambda e=e: relay_repo.get(e["commit"]), 60, what=f"kept commit {e['commit'][:7]} at the relay")

        stop_all([a, b])
        daemons = [relay]

        # a late joiner started the same way learns what was tried, from the relay alone
        late_home = init_home(tmp_path / "late")
        late = Daemon(late_home.path, "--no-research", "--bootstrap", relay.addrs[0]).start()
        daemons.append(late)
        wait_for(lambda: set(found) <= {e["id"] for e in late.json("experiments")}, 90,
                 what="the late joiner learns every result")
        repo = pygit2.Repository(str(late_home.repo))
        for e in kept:  # kept lineages are complete: objects were served by the relay
            wait_for(lambda e=e: repo.get(e["commit"]), 60, what=f"kept commit {e['commit'][:7]} at the late joiner")

        def late_lists_swarm():  # joined (the relay uses it: one peer), with what was tried in it
            sws = [s for s in late.json("status")["swarms"] if s["swarm"] == swarm and s["peers"] == 1]
            return sws and sws[0]["protocols"] and sws[0]["protocols"][0]["results"] >= len(found) and sws[0]
        sw = wait_for(late_lists_swarm, 60, what="the late joiner lists the swarm and its results")
        assert sw["protocols"][0]["budget"] == "20000 tokens"
    finally:
        stop_all(daemons)
    assert "result under another protocol" not in relay.stderr()


def test_relays_do_not_keep_a_swarm_alive_for_each_other():
    """A swarm only relays announce (one repeating another's, after its last research node left) weighs
    little and counts as unused: it is left after the idle time, so made-up swarms die out."""
    from p2p_research.net.topics import RELAY_VOTE

    exp = topic_names("beef")[0]
    topics = {exp: {"relay-b", "relay-c"}}
    is_relay = {"relay-b", "relay-c"}.__contains__
    assert swarm_weights(topics, is_relay)["beef"] == pytest.approx(2 * RELAY_VOTE)
    used = swarm_peer_counts(topics, lambda p: not is_relay(p))
    assert used == {"beef": 0}
    assert swarms_to_leave(["beef"], used, {"beef": 0.0}, now=601.0) == ["beef"]
    topics[exp].add("research-node")
    assert swarm_peer_counts(topics, lambda p: not is_relay(p)) == {"beef": 1}
