"""Benchmark of board-post propagation across N real node daemons (one OS process each).

Usage:
    .venv/bin/python bench/bench_gossip.py [--nodes 5 15 35] [--messages 20] [--rate 2] [--fanout 3]
        [--seed 0] [--settle 5] [--parallel-starts 2] [--start-limit 300] [--deliver-timeout 30]
        [--json OUT] [--keep]

For each N: `p2p-research init` N homes in a temp dir, start node 0 with `p2p-research node start
--no-research --listen /ip4/127.0.0.1/tcp/0`, then nodes 1..N-1 (at most `--parallel-starts` starting
at once), each with `--bootstrap` to up to `fanout` random earlier nodes already up (a sparse, seeded
mesh; peer exchange and libp2p's own auto-connector add links). Wait until every node has >= 1
connected peer (the "mesh" time), stay idle for `--settle` seconds (GossipSub heartbeat is 1 s; the
daemons' CPU over this quiet interval is the idle cost), then publish M posts at R per second from
random nodes (each text carries a unique id) through the control sockets, wait (bounded) until every
other node has them, and report:

- delivery ratio: (post, receiver) pairs received / expected (M * (N - 1));
- latency: received_at (receiver's ledger) - ts (sender's clock; one machine, one clock) over all
  delivered pairs: p50 / p99 / max;
- per daemon: CPU seconds (utime + stime from /proc/<pid>/stat) for the whole life, while idle and
  for the publish + delivery phase only, peak RSS (VmHWM), connected peers at the end (mean / min / max);
- per swarm: gossip duplicates, rejected and queue_full counters summed from `status`.

Every daemon started is stopped (SIGTERM, SIGKILL after a grace period), also on Ctrl+C or errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2p_research.daemon.control_call import call

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / ".venv" / "bin" / "p2p-research"
CLK_TCK = os.sysconf("SC_CLK_TCK")

START_TIMEOUT = 60.0  # seconds for one daemon to print its control line
MESH_TIMEOUT = 60.0
STOP_GRACE = 10.0


class BenchError(Exception):
    pass


# --- one daemon --------------------------------------------------------------------------------


@dataclass
class Daemon:
    index: int
    home: Path
    proc: subprocess.Popen | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    started_at: float = 0.0
    ready_at: float = 0.0
    bootstrap: list[str] = field(default_factory=list)
    last_cpu: float = 0.0  # last CPU reading (kept after the process is gone)
    last_hwm_kb: int = 0

    @property
    def sock(self) -> Path:
        return self.home / "control.sock"

    def start(self, bootstrap: list[str]) -> None:
        self.bootstrap = bootstrap
        cmd = [str(CLI), "node", "start", "--home", str(self.home), "--no-research",
               "--listen", "/ip4/127.0.0.1/tcp/0"]
        for b in bootstrap:
            cmd += ["--bootstrap", b]
        with open(self.home / "bench-stdout.log", "wb") as out, open(self.home / "bench-stderr.log", "wb") as err:
            self.started_at = time.time()
            # Own session: a Ctrl+C in the terminal reaches only the benchmark, which stops the daemons itself.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def check_ready(self) -> bool:
        """True once the daemon printed its control line (peer id and addresses parsed); raises if it died."""
        assert self.proc is not None
        if self.ready_at:
            return True
        text = (self.home / "bench-stdout.log").read_text(errors="replace")
        if "control:" in text:
            for line in text.splitlines():
                if line.startswith("peer id:"):
                    self.peer_id = line.split()[2]
                elif line.startswith("address:"):
                    self.addrs.append(line.split(None, 1)[1].strip())
            if not self.peer_id or not self.addrs:
                raise BenchError(f"node {self.index}: unexpected start-up output: {text[:300]!r}")
            self.ready_at = time.time()
            return True
        if self.proc.poll() is not None:
            tail = (self.home / "bench-stderr.log").read_text(errors="replace")[-800:]
            raise BenchError(f"node {self.index} exited with {self.proc.returncode} during start-up: {tail}")
        if time.time() - self.started_at > START_TIMEOUT:
            raise BenchError(f"node {self.index} did not come up within {START_TIMEOUT:.0f} s")
        return False

    def request(self, cmd: str, args: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        """One request on the control socket (what `p2p-research <cmd> --json` does, without the CLI start-up)."""
        resp = call(self.sock, cmd, args, timeout)
        if resp is None:
            raise BenchError(f"node {self.index}: control socket closed without an answer to {cmd}")
        if not resp.get("ok"):
            raise BenchError(f"node {self.index}: {cmd} refused: {resp.get('error')}")
        return resp.get("data")

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon process (fields 14 and 15 of /proc/<pid>/stat)."""
        if self.proc is None:
            return self.last_cpu
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return self.last_cpu
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
        self.last_cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return self.last_cpu

    def peak_rss_mb(self) -> float:
        if self.proc is not None:
            try:
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.last_hwm_kb = int(line.split()[1])
            except OSError:
                pass
        return self.last_hwm_kb / 1024


def stop_all(daemons: list[Daemon], grace: float = STOP_GRACE) -> dict[str, int]:
    """SIGTERM every running daemon, SIGKILL what is left after `grace` seconds; reap all."""
    # A second Ctrl+C (or a SIGTERM) must not interrupt the clean-up half-way.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        return _stop_all(daemons, grace)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_all(daemons: list[Daemon], grace: float) -> dict[str, int]:
    live = [d for d in daemons if d.proc is not None and d.proc.poll() is None]
    for d in live:
        d.cpu_seconds()
        d.peak_rss_mb()
        try:
            d.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    killed = 0
    for d in live:
        try:
            d.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
            killed += 1
    for d in daemons:  # already-dead ones: reap
        if d.proc is not None:
            d.proc.poll()
    return {"terminated": len(live) - killed, "killed": killed}


# --- one swarm size ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def run_swarm(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rng = random.Random(args.seed * 1000 + n)
    run_tag = uuid.uuid4().hex[:8]
    base = tmp / f"n{n}"
    base.mkdir()
    daemons = [Daemon(i, base / f"node{i:02d}") for i in range(n)]
    t_begin = time.time()
    load_before = os.getloadavg()[0]
    try:
        # 1. homes, as users make them
        for d in daemons:
            subprocess.run([str(CLI), "init", "--home", str(d.home)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=60)
        t_init = time.time()

        # 2. daemons, each bootstrapping from up to `fanout` random earlier nodes
        #    Up to `--parallel-starts` daemons start at once (Python start-up is ~1 CPU second each); a new
        #    node picks among the earlier nodes that are already up (all of them when the window is 1).
        ready: list[Daemon] = []
        starting: list[Daemon] = []
        nxt = 0
        deadline = time.time() + args.start_limit
        while len(ready) < n:
            while nxt < n and len(starting) < args.parallel_starts and (nxt == 0 or ready):
                pool = sorted(ready, key=lambda d: d.index)
                picks = rng.sample(pool, min(args.fanout, len(pool)))
                daemons[nxt].start([p.addrs[0] for p in picks])
                starting.append(daemons[nxt])
                nxt += 1
            for d in list(starting):
                if d.check_ready():
                    starting.remove(d)
                    ready.append(d)
            if time.time() > deadline:
                raise BenchError(f"N={n}: only {len(ready)} daemons up after {args.start_limit:.0f} s")
            time.sleep(0.05)
        t_started = time.time()
        start_s = [d.ready_at - d.started_at for d in daemons]

        # 3. wait until every node has >= 1 peer
        deadline = time.time() + MESH_TIMEOUT
        pending = set(range(n)) if n > 1 else set()
        while pending and time.time() < deadline:
            for i in sorted(pending):
                if daemons[i].request("status")["peers_connected"] >= 1:
                    pending.discard(i)
            if pending:
                time.sleep(0.1)
        if pending:
            raise BenchError(f"N={n}: nodes {sorted(pending)} had no peer after {MESH_TIMEOUT:.0f} s")
        t_mesh = time.time()
        peers_at_mesh = [len(d.request("peers")) for d in daemons]
        idle0 = [d.cpu_seconds() for d in daemons]
        t_idle0 = time.time()
        time.sleep(args.settle)  # nothing published: this is the swarm's idle cost
        idle_cores = [(d.cpu_seconds() - c) / (time.time() - t_idle0) for d, c in zip(daemons, idle0, strict=True)]

        # 4. publish M posts at R per second from random nodes
        cpu_before = [d.cpu_seconds() for d in daemons]
        senders = [rng.randrange(n) for _ in range(args.messages)]
        texts = [f"bench {run_tag} post {k:04d}" for k in range(args.messages)]
        sent: dict[str, dict[str, Any]] = {}
        t_pub0 = time.time()

        def publish(k: int) -> tuple[int, float, Any]:
            t0 = time.time()
            data = daemons[senders[k]].request("post", {"text": texts[k]}, timeout=30)
            return k, time.time() - t0, data

        pool = ThreadPoolExecutor(max_workers=8)  # a post call can wait for the mesh: do not delay the next
        try:
            futures = []
            for k in range(args.messages):
                delay = t_pub0 + k / args.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                futures.append(pool.submit(publish, k))
            for f in futures:
                k, call_s, data = f.result()
                sent[texts[k]] = {"sender": senders[k], "ts": data["ts"], "call_s": call_s}
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        t_pub1 = time.time()

        # 5. wait (bounded) for delivery everywhere
        expected = {(t, i) for t, s in sent.items() for i in range(n) if i != s["sender"]}
        got: dict[tuple[str, int], float] = {}
        deadline = time.time() + args.deliver_timeout
        missing_nodes = set(range(n))
        while True:
            for i in sorted(missing_nodes):
                for p in daemons[i].request("board", {"limit": 10_000}):
                    if p["text"] in sent and p["origin"] == "peer":
                        got[(p["text"], i)] = p["received_at"] - p["ts"]
                if all((t, i) in got for t, s in sent.items() if s["sender"] != i):
                    missing_nodes.discard(i)
            if not missing_nodes or time.time() >= deadline:
                break
            time.sleep(0.5)
        t_done = time.time()

        # 6. resources and counters
        cpu_after = [d.cpu_seconds() for d in daemons]
        rss = [d.peak_rss_mb() for d in daemons]
        peers_end = [len(d.request("peers")) for d in daemons]
        statuses = [d.request("status") for d in daemons]
        net = {k: sum(s["net"].get(k, 0) for s in statuses) for k in ("published", "received", "duplicate", "queue_full")}
        net["rejected"] = sum(sum(s["net"].get("rejected", {}).values()) for s in statuses)
        lat = [got[key] for key in expected if key in got]
        delivered = len(lat)
        alive = sum(1 for d in daemons if d.proc is not None and d.proc.poll() is None)
    finally:
        stopped = stop_all(daemons)
    t_end = time.time()

    return {
        "nodes": n, "messages": args.messages, "rate_per_s": args.rate, "fanout": args.fanout, "seed": args.seed,
        "parallel_starts": args.parallel_starts, "loadavg_before": load_before,
        "start_s_per_node": summary(start_s),
        "init_s": t_init - t_begin,
        "startup_total_s": t_started - t_init,
        "mesh_s": t_mesh - t_init,  # first daemon launched -> every node has >= 1 peer
        "mesh_after_last_start_s": t_mesh - t_started,
        "publish_s": t_pub1 - t_pub0,
        "post_call_s": summary([s["call_s"] for s in sent.values()]),
        "delivery_wait_s": t_done - t_pub1,
        "delivered": delivered, "expected": len(expected),
        "delivery_ratio": delivered / len(expected) if expected else 1.0,
        "nodes_missing_posts": sorted(missing_nodes),
        "latency_s": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat) if lat else None,
                      "mean": statistics.fmean(lat) if lat else None},
        "cpu_s_total": summary(cpu_after),
        "idle_cpu_cores": summary(idle_cores),  # per daemon, during --settle (no posts)
        "cpu_s_publish_phase": summary([a - b for a, b in zip(cpu_after, cpu_before, strict=True)]),
        "publish_phase_s": t_done - t_pub0,
        "peak_rss_mb": summary(rss),
        "peers_at_mesh": summary([float(x) for x in peers_at_mesh]),
        "peers_end": summary([float(x) for x in peers_end]),
        "net": net,
        "alive_at_end": alive,
        "stopped": stopped,
        "total_s": t_end - t_begin,
    }


# --- output ------------------------------------------------------------------------------------


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        ("nodes", lambda r: str(r["nodes"])),
        ("init N homes s", lambda r: fmt(r["init_s"], 1)),
        ("daemon start s (mean/max)", lambda r: f"{fmt(r['start_s_per_node']['mean'])} / {fmt(r['start_s_per_node']['max'])}"),
        ("all started s", lambda r: fmt(r["startup_total_s"], 1)),
        ("mesh s (all >= 1 peer)", lambda r: fmt(r["mesh_s"], 1)),
        ("  after last start s", lambda r: fmt(r["mesh_after_last_start_s"], 2)),
        ("publish span s", lambda r: fmt(r["publish_s"], 1)),
        ("post call s (mean/max)", lambda r: f"{fmt(r['post_call_s']['mean'], 3)} / {fmt(r['post_call_s']['max'], 3)}"),
        ("delivered / expected", lambda r: f"{r['delivered']} / {r['expected']}"),
        ("delivery ratio", lambda r: fmt(r["delivery_ratio"], 3)),
        ("latency p50 ms", lambda r: fmt(None if r["latency_s"]["p50"] is None else 1000 * r["latency_s"]["p50"], 1)),
        ("latency p99 ms", lambda r: fmt(None if r["latency_s"]["p99"] is None else 1000 * r["latency_s"]["p99"], 1)),
        ("latency max ms", lambda r: fmt(None if r["latency_s"]["max"] is None else 1000 * r["latency_s"]["max"], 1)),
        ("CPU s/daemon total (mean/max)", lambda r: f"{fmt(r['cpu_s_total']['mean'])} / {fmt(r['cpu_s_total']['max'])}"),
        ("idle CPU %/daemon (mean/max)", lambda r: f"{fmt(100 * r['idle_cpu_cores']['mean'], 1)} / "
                                                    f"{fmt(100 * r['idle_cpu_cores']['max'], 1)}"),
        ("  idle CPU % all daemons", lambda r: fmt(100 * r["idle_cpu_cores"]["mean"] * r["nodes"], 0)),
        ("CPU s/daemon publish phase", lambda r: f"{fmt(r['cpu_s_publish_phase']['mean'])} / "
                                                   f"{fmt(r['cpu_s_publish_phase']['max'])}"),
        ("  publish phase wall s", lambda r: fmt(r["publish_phase_s"], 1)),
        ("peak RSS MB (mean/max)", lambda r: f"{fmt(r['peak_rss_mb']['mean'], 0)} / {fmt(r['peak_rss_mb']['max'], 0)}"),
        ("peers/node end (mean/min/max)", lambda r: f"{fmt(r['peers_end']['mean'], 1)} / {fmt(r['peers_end']['min'], 0)}"
                                                      f" / {fmt(r['peers_end']['max'], 0)}"),
        ("gossip duplicates (sum)", lambda r: str(r["net"]["duplicate"])),
        ("rejected / queue_full (sum)", lambda r: f"{r['net']['rejected']} / {r['net']['queue_full']}"),
        ("bench wall s", lambda r: fmt(r["total_s"], 1)),
    ]
    w0 = max(len(name) for name, _ in rows)
    cols = [[f(r) for r in results] for _, f in rows]
    w = max([len(c) for col in cols for c in col] + [8])
    for (name, _), col in zip(rows, cols, strict=True):
        print(f"{name:<{w0}}  " + "  ".join(f"{c:>{w}}" for c in col))


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_before": os.getloadavg()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[5, 15, 35], help="swarm sizes (default: 5 15 35)")
    ap.add_argument("--messages", type=int, default=20, help="posts per swarm (default 20)")
    ap.add_argument("--rate", type=float, default=2.0, help="posts per second (default 2)")
    ap.add_argument("--fanout", type=int, default=3, help="bootstrap addresses per node (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel-starts", type=int, default=2, help="daemons starting at once (default 2)")
    ap.add_argument("--start-limit", type=float, default=300.0, help="max seconds to start all daemons of a swarm")
    ap.add_argument("--settle", type=float, default=5.0, help="idle seconds between mesh and first post (default 5)")
    ap.add_argument("--deliver-timeout", type=float, default=30.0, help="max seconds to wait for delivery")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the node homes (logs) in the temp dir")
    args = ap.parse_args()
    if min(args.nodes) < 1 or args.messages < 1 or args.rate <= 0 or args.fanout < 1 or args.parallel_starts < 1:
        ap.error("--nodes, --messages, --fanout, --parallel-starts must be >= 1 and --rate > 0")
    if not CLI.exists():
        print(f"error: {CLI} not found (run `make install`)", file=sys.stderr)
        return 2

    # SIGTERM (and SIGHUP) to the benchmark take the same path as Ctrl+C: finally-blocks stop the daemons.
    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    info = machine()
    print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}; load {info['loadavg_before'][0]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gossip-"))
    results: list[dict[str, Any]] = []
    rc = 0
    try:
        for n in args.nodes:
            print(f"N={n}: starting ...", flush=True)
            r = run_swarm(n, args, tmp)
            results.append(r)
            print(f"N={n}: delivery {r['delivered']}/{r['expected']}, p50 "
                  f"{fmt(r['latency_s']['p50'] and 1000 * r['latency_s']['p50'], 1)} ms, {r['total_s']:.1f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted: daemons stopped", file=sys.stderr)
        rc = 130
    except (BenchError, subprocess.SubprocessError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 1
    finally:
        if args.keep:
            print(f"node homes kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if results:
        print()
        print_table(results)
        if args.json:
            args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": info,
                                             "command": " ".join([".venv/bin/python", "bench/bench_gossip.py", *sys.argv[1:]]),
                                             "results": results}, indent=2))
            print(f"\nwrote {args.json}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
