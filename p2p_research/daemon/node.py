"""The node daemon: one trio nursery that owns the network, the research loop, intake and the control socket.

Start-up order matters for users: configuration and addresses are checked before anything runs (a
bad bootstrap address is a one-line error), the peer id and bootstrap addresses are printed as soon
as the host listens, and SIGINT/SIGTERM stop the loop (the current run is killed and recorded as
aborted), close the host and leave the ledger consistent.
"""

from __future__ import annotations

import functools
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
import trio.lowlevel

from p2p_research import __version__
from p2p_research.config import NodeConfig
from p2p_research.daemon import known_peers, views
from p2p_research.daemon.address import stable_listen
from p2p_research.daemon.announcer import Announcer, AnnouncerDeps
from p2p_research.daemon.catchup import (
    ANTI_ENTROPY_S,
    CATCHUP_LIMITS,
    CATCHUP_PROTOCOL,
    PROTOCOL_SINCE,
    SINCE_LIMITS,
    SINCE_PROTOCOL,
    CatchUp,
)
from p2p_research.daemon.control import ControlError, ControlServer
from p2p_research.daemon.coordinator import CoordinatorDeps, SwarmCoordinator
from p2p_research.daemon.intake import Intake
from p2p_research.daemon.messages import make_post
from p2p_research.daemon.siblings import SiblingFollower
from p2p_research.daemon.taskdump import end_if_still_stopping, report_if_still_stopping
from p2p_research.daemon.workers import worker_envs
from p2p_research.home import HomeError, HomeLock, NodeHome
from p2p_research.net.boundary import PeerTasks, contained
from p2p_research.research import flooding
from p2p_research.research.ids import swarm_id_of
from p2p_research.research.io.context import ResearchContext, open_context
from p2p_research.research.io.engine import Hooks, ResearchEngine
from p2p_research.research.ownership import Ownership
from p2p_research.research.siblings import SiblingBook
from p2p_research.research.turns import ADOPTION_POLL_S

if TYPE_CHECKING:  # libp2p loads only when a node starts
    from p2p_research.net.network import Network

log = logging.getLogger("p2p_research.daemon")

JOIN_WAIT_S = 10.0  # how long a node given bootstrap peers waits to join before its first proposal
DIGEST_INTERVAL_S = 20.0
# a stored protocol whose genesis was not found (its objects still on their way) is looked for again after
# this long: at 60 s, a status call made just before a catch-up's objects landed hid the swarm for a minute
UNKNOWN_SWARM_RECHECK_S = 5.0


@dataclass
class DaemonOptions:
    listen: list[str] = field(default_factory=list)
    bootstrap: list[str] = field(default_factory=list)
    research: bool = True
    max_experiments: int | None = None
    dashboard: str | None = None  # HOST:PORT of the web dashboard and /metrics; None: off
    dashboard_fall_back: bool = True  # a busy default port falls back to a free one; an asked-for one is an error
    progress_every_s: float | None = 60.0  # a one-line progress log while research goes on; None: off


def is_relay(options: DaemonOptions, config: NodeConfig) -> bool:
    """A node that trains nothing serves every swarm its peers use (not only its home's protocol)."""
    return not (options.research and config.research.enabled)


def object_source(ctx: ResearchContext, oid: str) -> tuple[int, bytes] | None:
    """A git object of this node's workspace, for peers that fetch it."""
    obj = ctx.workspace.read_object(oid)
    return (obj.kind, obj.data) if obj else None


@dataclass
class Workers:
    """The research engines of a node, one per device; empty until research starts (and on a relay)."""

    engines: list[ResearchEngine] = field(default_factory=list)

    @property
    def engine(self) -> ResearchEngine | None:
        """Worker 0: verifications when following, and what `status` shows."""
        return self.engines[0] if self.engines else None


class NodeDaemon:
    def __init__(self, home: NodeHome, config: NodeConfig, options: DaemonOptions,
                 make_proposer: Callable[..., Any]) -> None:
        self.home = home
        self.config = config
        self.options = options
        self.make_proposer = make_proposer
        self.started_at = time.time()
        self.node: RunningNode | None = None  # the running node, once its parts are up (None before and after)

    # --- lifecycle --------------------------------------------------------------------------------
    async def run(self, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        from p2p_research.net.host import parse_listen_addr, parse_peer_addr
        from p2p_research.net.identity import load_or_create_identity, peer_id_of_keypair, short_name
        from p2p_research.net.network import NetConfig, open_network

        cfg = self.config
        listen = self.options.listen or cfg.network.listen
        bootstrap = self.options.bootstrap or cfg.network.bootstrap
        for a in listen:
            parse_listen_addr(a)      # ValueError with a clear message, before anything starts
        for a in bootstrap:
            parse_peer_addr(a)
        with HomeLock(self.home, "a node daemon"):
            listen = stable_listen(listen, self.home.path / "listen.json")  # the same port after a restart
            dashboard: Any = None  # the dashboard's bound socket (dashboard.serve.Bound) when it is on
            if self.options.dashboard:  # bound before anything starts: a bad address is a one-line error
                from p2p_research.dashboard.serve import bind

                dashboard = bind(self.options.dashboard, self.home.path / "dashboard.token",
                                 fall_back=self.options.dashboard_fall_back)
            ctx = open_context(self.home, cfg)
            try:
                if not ctx.sandbox.available and cfg.research.objective != "surrogate":
                    log.warning("no sandbox for training runs: %s; peers' changes are limited to constants "
                                "(trust policy %s)", ctx.sandbox.reason, ctx.trust_policy)
                bad = ctx.workspace.quarantine_malformed()  # objects an older version let in unchecked
                if bad:
                    log.warning("moved %d malformed object(s) to repo/.git/quarantine", len(bad))
                key_pair = load_or_create_identity(self.home.identity)
                peer_id = peer_id_of_keypair(key_pair)
                name = cfg.node.name or short_name(peer_id)
                swarm = swarm_id_of(ctx.workspace.genesis, ctx.protocol_id)
                relay = is_relay(self.options, cfg)
                about = ({"role": "relay"} if relay else
                         {"swarm": swarm, "protocol": ctx.protocol_id, "budget": ctx.budget.describe(), "role": "research"})
                if not relay:
                    await hold_out_private_shard(ctx)
                remembered = known_peers.load(self.home.path / known_peers.FILE)
                net_cfg = NetConfig(key_pair=key_pair, swarm_id=swarm, listen=listen, bootstrap=bootstrap,
                                    remembered=remembered, exempt_addresses=list(cfg.network.exempt_addresses),
                                    target_peers=cfg.network.target_peers, rate_limit_per_s=cfg.network.rate_limit_per_s,
                                    about=about, serve_any_swarm=relay, nat=cfg.network.nat == "auto",
                                    relay_service={"on": True, "off": False}.get(cfg.network.relay_service,
                                                                                 True if relay else None))
                async with open_network(net_cfg, functools.partial(object_source, ctx)) as net, \
                        trio.open_nursery() as nursery:
                    intake = Intake(ctx, net, peer_id, any_protocol=relay)
                    # the peers heard recently, shared by the two below; a sparse swarm's members speak
                    # only by presence messages, so they are remembered for longer there
                    owners = Ownership(peer_id, flooding.member_memory_for(cfg.network.announce))
                    workers = Workers()  # filled when research starts
                    catchup: CatchUp | None = None
                    announcer = Announcer(AnnouncerDeps(
                        ctx=ctx, net=net, key_pair=key_pair, peer_id=peer_id, mode=cfg.network.announce,
                        owners=owners, start_soon=nursery.start_soon,
                        expected_seconds=lambda: workers.engine.expected_seconds() if workers.engine else None,
                        measured_for_peers=lambda run: (run.kind == "baseline" and workers.engine is not None
                                                        and workers.engine.measures_for_peers == run.commit_id),
                        caught_up=lambda: catchup is not None and (catchup.completed > 0 or catchup.received > 0),
                        running=lambda exp_id: any(e.progress.exp_id == exp_id for e in workers.engines),
                        on_dht_claim=lambda claim: intake.accept_claim(claim, time.time())))
                    coord = SwarmCoordinator(CoordinatorDeps(
                        peer_id=peer_id, key_pair=key_pair, ctx=ctx, config=cfg,
                        engine=lambda: workers.engine, engines=lambda: workers.engines, publish=net.publish,
                        dht_record=announcer.dht_record, faults=net.faults, claims=intake.claims,
                        sparse=announcer.sparse, owners=owners, announce_result=announcer.announce_result))
                    intake.on_result, intake.on_claim, intake.on_verification = (
                        coord.on_result, coord.on_claim, coord.on_verification)

                    def on_presence(peer: str) -> None:
                        coord.on_presence(peer)
                        announcer.on_presence()
                    intake.on_presence = on_presence
                    intake.wants = coord.wants
                    # every task that handles a peer's input runs inside a fault boundary
                    peer_tasks = PeerTasks(nursery, net.faults)
                    nursery.start_soon(self.watch_signals, nursery.cancel_scope,
                                       functools.partial(self.cleanup_after_a_held_stop, ctx))
                    nursery.start_soon(known_peers.keep, self.home.path / known_peers.FILE,
                                       net.peer_manager.good_peers, remembered)

                    async def deliver(inc: Any) -> bool:
                        """Hand a relayed result to intake; whether it was new here."""
                        before = intake.stats["results"]
                        await contained(net.faults, inc.from_peer, "catchup.entry", intake.handle, inc, peer_tasks)
                        return intake.stats["results"] > before

                    # a relay asks for and serves every protocol it stores
                    catchup = CatchUp(net.host, ctx.ledger, None if relay else ctx.protocol_id, deliver,
                                      serves=announcer.serves)
                    # sibling protocols (same genesis, another budget or hardware): their kept changes are ideas
                    siblings = (SiblingBook(ctx.workspace.genesis, ctx.protocol_id)
                                if not relay and cfg.research.ideas else None)
                    if siblings is not None:
                        intake.is_sibling = siblings.__contains__
                    self.node = node = RunningNode(
                        home=self.home, config=cfg, options=self.options, make_proposer=self.make_proposer,
                        started_at=self.started_at, peer_id=peer_id, name=name, dashboard=dashboard,
                        ctx=ctx, net=net, intake=intake, announcer=announcer, coordinator=coord, catchup=catchup,
                        workers=workers, siblings=siblings)
                    await nursery.start(ControlServer(self.home.control_socket, node.handlers()).serve)
                    if dashboard is not None:
                        await nursery.start(node.serve_dashboard)
                    nursery.start_soon(intake.run, peer_tasks)
                    net.handle(CATCHUP_PROTOCOL, catchup.handle, CATCHUP_LIMITS)
                    net.handle(SINCE_PROTOCOL, catchup.handle_since, SINCE_LIMITS)
                    net.handle(PROTOCOL_SINCE, catchup.handle_since, SINCE_LIMITS)
                    nursery.start_soon(catchup.run, lambda: [p.peer_id for p in net.peers()], 3,
                                       node.anti_entropy_interval)
                    nursery.start_soon(node.write_digest_periodically)
                    if on_ready:
                        on_ready(node.identity_view())
                    if siblings is not None:
                        follower = SiblingFollower(
                            siblings, abouts=lambda: [(p.peer_id, p.about) for p in net.peers()],
                            join=functools.partial(net.join_swarm, board=False), leave=net.leave_swarm,
                            catch_up=catchup.fetch_sibling)
                        nursery.start_soon(follower.run, peer_tasks)
                    if not relay:
                        nursery.start_soon(node.research_loop)
                        if self.options.progress_every_s:
                            nursery.start_soon(node.log_progress, self.options.progress_every_s)
                        nursery.start_soon(announcer.announce_presence)
                    else:
                        node.research_state = "relay-only"
            finally:
                self.node = None
                close_after_stop(ctx)
        log.info("node stopped")

    async def watch_signals(self, scope: trio.CancelScope, finish: Callable[[], None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.warning("%s: stopping the node", signal.Signals(signum).name)
                trio.lowlevel.spawn_system_task(report_if_still_stopping, name="stop-report")
                trio.lowlevel.spawn_system_task(end_if_still_stopping, finish, name="stop-deadline")
                scope.cancel()
                return

    def cleanup_after_a_held_stop(self, ctx: ResearchContext) -> None:
        """For a stop that py-libp2p's teardown holds past taskdump.STOP_DEADLINE_S (the process exits
        right after): `run`'s own cleanup, and the control server's, which removes its socket."""
        close_after_stop(ctx)
        self.home.control_socket.unlink(missing_ok=True)


def close_after_stop(ctx: ResearchContext) -> None:
    """The stop's bookkeeping: a run still under way is recorded as aborted, and the ledger closed."""
    ctx.ledger.abort_running("the node stopped during this run")
    ctx.close()


async def hold_out_private_shard(ctx: ResearchContext) -> None:
    """autoresearch's data (harness/shards.py): the private shard that lets this node take peers' code
    is fetched before the node hears any peer, so no result that arrives at start is held to constants
    for want of it. Once per node home; a node that cannot fetch it says why and starts without it."""
    from p2p_research.harness import shards
    from p2p_research.research.io.runner import run_training

    if not (ctx.harness_measures and ctx.sandbox.available and ctx.trust_policy == "sandboxed"
            and not ctx.config.research.data and shards.supports_shards(ctx.genesis_prepare)):
        return
    await shards.prepare(ctx.home.path, ctx.genesis_prepare, ctx.config.research.train_command, ctx.private_seed(),
                         {}, run_training)


class RunningNode:
    """A node whose parts are up: the research loop, the swarm work between experiments, the views and
    the control handlers. Every part is built once by `NodeDaemon.run` and handed in typed; none is
    ever None here (the workers are, until research starts, and on a relay)."""

    def __init__(self, *, home: NodeHome, config: NodeConfig, options: DaemonOptions, make_proposer: Callable[..., Any],
                 started_at: float, peer_id: str, name: str, dashboard: Any, ctx: ResearchContext, net: Network,
                 intake: Intake, announcer: Announcer, coordinator: SwarmCoordinator, catchup: CatchUp,
                 workers: Workers, siblings: SiblingBook | None = None) -> None:
        self.home, self.config, self.options, self.make_proposer = home, config, options, make_proposer
        self.started_at, self.peer_id, self.name = started_at, peer_id, name
        self.dashboard = dashboard  # the dashboard's bound socket (dashboard.serve.Bound) when it is on
        self.ctx, self.net, self.intake = ctx, net, intake
        self.announcer = announcer      # what this node tells the swarm, and asks the DHT
        self.coordinator = coordinator  # verification and adoption between experiments
        self.catchup = catchup
        self.workers = workers
        self.siblings = siblings  # sibling protocols followed for ideas (None: a relay, or research.ideas off)
        self.research_state = "off"
        self._between_lock = trio.Lock()
        self._protocol_swarm: dict[str, str] = {}
        self._protocol_unknown: dict[str, float] = {}  # protocol -> when its genesis was last not found

    @property
    def relay(self) -> bool:
        return is_relay(self.options, self.config)

    @property
    def engine(self) -> ResearchEngine | None:
        return self.workers.engine

    @property
    def engines(self) -> list[ResearchEngine]:
        return self.workers.engines

    def anti_entropy_interval(self) -> float:
        """Sync more often once this node only follows the swarm: converging is then all it does."""
        following = self.coordinator.following
        return ANTI_ENTROPY_S / 3 if following else ANTI_ENTROPY_S

    # --- research ---------------------------------------------------------------------------------
    async def research_loop(self) -> None:
        try:
            proposer = self.make_proposer(self.ctx, researchers=self.researchers)
        except HomeError as e:  # e.g. a malformed search-space block: the node stays up as a relay
            log.error("research not started: %s", e)
            self.research_state = f"failed: {e}"
            return
        envs = worker_envs(self.config)
        engines: list[ResearchEngine] = []
        # research.genesis = shared: peers measure the genesis for a node that floods to them (it hears
        # theirs); one without peers to ask, or in a sparse swarm, measures it as a solo node does
        # (a node of several workers measures first: its others start once worker 0 has a value)
        share_genesis = (len(envs) == 1 and self.config.research.genesis == "shared"
                         and bool(self.options.bootstrap or self.config.network.bootstrap)
                         and not self.announcer.sparse())
        for i, env in enumerate(envs):
            worker_proposer = proposer if i == 0 else self.make_proposer(self.ctx, seed_offset=7919 * i, researchers=self.researchers)
            engines.append(ResearchEngine(self.ctx, worker_proposer, Hooks(
                on_claim=self.announcer.announce_claim, on_result=self.coordinator.announce_own,
                is_known=self.coordinator.is_known, contested=self.coordinator.contested,
                is_mine=self.coordinator.owns, researchers=self.researchers,
                speculation=self.coordinator.speculation, built_on=self.coordinator.built_on,
                tried=self.coordinator.tried, check_negatives=self.coordinator.check_negatives),
                worker=i, worker_env=env, peer=self.peer_id, share_genesis=share_genesis, workers=engines))
        self.workers.engines = engines
        engine = engines[0]
        self.research_state = "running"
        if len(engines) > 1:
            log.info("%d workers: %s", len(engines), "; ".join(
                f"worker {i}: " + (", ".join(f"{k}={v}" for k, v in env.items()) or "default") for i, env in enumerate(envs)))
        await self.join_first(engine)
        while True:
            try:
                done = await self.run_workers(engines)
            except Exception as e:  # noqa: BLE001 - the node stays up as a relay and keeps its ledger
                log.exception("research loop failed")
                self.research_state = f"failed: {e}"
                return
            self.research_state = f"done: {done.reason}"
            if done.resumable:  # nothing left to propose from this baseline: not an error, and not the end
                log.info("research loop ended: %s; it resumes when a new baseline is adopted", done.reason)
            else:
                (log.error if done.error else log.info)("research loop ended: %s", done.reason)
            if engine.loop is None or engine.loop.baseline_value is None:
                return
            if not await self.follow(done.resumable):
                return
            log.info("the baseline changed: research resumes from %s", engine.current_baseline()[0][:7])
            self.research_state = "running"

    async def join_first(self, engine: ResearchEngine) -> None:
        """A node given bootstrap peers proposes nothing before it has joined them: connected, and one
        catch-up of their claims and results done (or JOIN_WAIT_S passed). Otherwise its first
        experiment can start before the claim or the result of a peer that already ran it arrives, and
        one experiment runs twice (a tiny search space made it likely: both nodes pick the same few)."""
        if not (self.options.bootstrap or self.config.network.bootstrap):
            return
        deadline = time.monotonic() + JOIN_WAIT_S
        progress = engine.progress
        while time.monotonic() < deadline and not self.joined():
            progress.phase = "waiting"
            progress.waiting_for = (f"joining the swarm: {len(self.net.peers())} peer(s) connected, catching up "
                                    f"on their results ({deadline - time.monotonic():.0f} s more at most)")
            await trio.sleep(0.1)
        if not self.joined():
            log.info("research starts before joining the swarm: no catch-up from a peer in %.0f s", JOIN_WAIT_S)
        progress.phase, progress.waiting_for = "starting", ""

    def joined(self) -> bool:
        """Connected to a peer and caught up from one at least once (even with nothing to receive)."""
        return bool(self.net.peers()) and (self.catchup.completed > 0 or self.catchup.received > 0)

    async def log_progress(self, every_s: float) -> None:
        """The daemon's terminal (or log file) is not silent for a whole run (autoresearch's are 5
        minutes): one line every `every_s` while a worker measures, trains or waits, the same words as
        `run`'s live line. Marked as the progress line: a terminal that shows the live line
        (cli/live_line.py) leaves it to the log file."""
        from p2p_research.net.logsetup import PROGRESS

        while True:
            await trio.sleep(every_s)
            for eng in self.workers.engines:
                if eng.progress.phase in ("baseline", "training", "waiting"):
                    prefix = f"worker {eng.worker}: " if len(self.workers.engines) > 1 else ""
                    log.info("progress: %s%s", prefix, eng.progress.label(), extra={PROGRESS: True})

    async def follow(self, until_new_baseline: bool) -> bool:
        """No more experiments of its own, but the node keeps following the swarm: better baselines that
        peers publish are still verified and adopted, by rank rather than by margin, so every node ends
        on the swarm's best. Research that ended for want of anything to propose from its baseline
        resumes once another is adopted (True)."""
        start = self.ctx.ledger.baseline(self.ctx.protocol_id)
        self.coordinator.following = True
        try:
            while True:
                await trio.sleep(ADOPTION_POLL_S)
                try:
                    await self.coordinator.between()
                except Exception:  # noqa: BLE001 - following is best effort; the node stays up as a relay
                    log.exception("following the swarm failed once; trying again")
                now = self.ctx.ledger.baseline(self.ctx.protocol_id)
                if until_new_baseline and now is not None and (start is None or now.commit_id != start.commit_id):
                    return True
        finally:
            self.coordinator.following = False

    async def run_workers(self, engines: list[ResearchEngine]) -> Any:
        """Worker 0 measures the baseline; the others start from it, each on its own device, sharing
        the ledger (dedup), the claims and every new baseline. Returns worker 0's Done."""
        if len(engines) == 1:
            return await engines[0].run(self.options.max_experiments, between=functools.partial(self.before_proposal, 0))
        results: dict[int, Any] = {}
        per_worker = self.options.max_experiments

        async def one(eng: ResearchEngine) -> None:
            results[eng.worker] = await eng.run(per_worker, between=functools.partial(self.before_proposal, eng.worker))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, engines[0])
            while engines[0].loop is None or engines[0].loop.baseline_value is None:
                if 0 in results:  # the baseline failed: the others would fail the same way
                    return results[0]
                await trio.sleep(0.2)
            for eng in engines[1:]:
                nursery.start_soon(one, eng)
        return results[0]

    async def before_proposal(self, worker: int = 0) -> None:
        """Swarm work between experiments (verify, adopt); a fresh DHT lookup budget for the proposal.
        One worker at a time: another that finds it busy goes on proposing instead of waiting a run."""
        self.announcer.new_proposal()
        if self._between_lock.locked():
            return
        async with self._between_lock:
            await self.coordinator.between(self.engines[worker] if worker < len(self.engines) else None)

    # --- DHT ---------------------------------------------------------------------------------------
    def _dht(self) -> Any:
        return self.announcer.dht()

    async def write_digest_periodically(self) -> None:
        """Keep SWARM.md current for agents (and humans) reading the workspace."""
        from p2p_research.research.io.digest import render_swarm_md

        last: tuple = ()
        while True:
            # Rendering reads the whole ledger (measured: ~10% of a busy node's CPU every 5 s), so only
            # when runs or baselines changed; an agent proposer gets a fresh one before each proposal.
            key = self.ctx.ledger.change_key()
            if key != last:
                last = key
                text = render_swarm_md(self.ctx.ledger, self.ctx.protocol_id, self.peer_id)
                tmp = self.home.repo / ".git" / "SWARM.md.tmp"
                tmp.write_text(text)
                tmp.replace(self.home.swarm_md)
            await trio.sleep(DIGEST_INTERVAL_S)

    # --- control handlers -------------------------------------------------------------------------
    async def serve_dashboard(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The web dashboard and /metrics, on this loop, over the control handlers (read-only views)."""
        from p2p_research.dashboard.app import make_app
        from p2p_research.dashboard.metrics import NodeCollector, registry_for
        from p2p_research.dashboard.serve import serve

        metrics = registry_for(NodeCollector(self.status_view, self.ctx.ledger))
        loopback = self.dashboard.token is None
        app = make_app(self.handlers(), token=self.dashboard.token, metrics=metrics,
                       loopback_port=self.dashboard.port if loopback else None)
        log.info("dashboard: %s", self.dashboard.url)
        await serve(app, self.dashboard, task_status=task_status)

    def identity_view(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "name": self.name, "addrs": self.net.addrs(),
                "home": str(self.home.path),
                "dashboard": self.dashboard.url if self.dashboard is not None else None,
                "dashboard_token": self.dashboard is not None and self.dashboard.token is not None,
                "sandbox": self.ctx.sandbox.describe(), "trust_policy": self.ctx.trust_policy,
                "peers_code": self.ctx.trust().peers_code()}

    def status_view(self) -> dict[str, Any]:
        ctx = self.ctx
        b = ctx.ledger.baseline(ctx.protocol_id)
        current = None
        if self.engine is not None and self.engine.progress.phase in ("baseline", "training", "proposing", "waiting"):
            p = self.engine.progress
            current = {"phase": p.phase, "exp_id": p.exp_id, "commit": p.commit, "description": p.description,
                       "elapsed_s": time.time() - p.started_at if p.started_at else None, "progress": p.fraction(),
                       "waiting_for": p.waiting_for if p.phase == "waiting" else ""}
        counts = ctx.ledger.counts()
        return {
            "peer_id": self.peer_id, "name": self.name, "swarm": swarm_id_of(ctx.workspace.genesis, ctx.protocol_id),
            "protocol_id": ctx.protocol_id, "genesis": ctx.workspace.genesis, "budget": ctx.budget.describe(),
            "baseline": {"commit": b.commit_id if b else ctx.workspace.baseline, "val_bpb": b.val_bpb if b else None,
                         "lineage": views.lineage_view(ctx.ledger, ctx.protocol_id, self.peer_id)},
            "current": current, "research": self.research_state, "role": "relay" if self.relay else "research",
            "reachability": self.net.nat.view() if self.net.nat is not None else {},
            "swarms": self.swarms_view(),
            "sandbox": ctx.sandbox.describe(), "trust_policy": ctx.trust_policy,
            "peers_code": ctx.trust().peers_code(),
            **self.protocol_view(),
            "siblings": self.siblings.view() if self.siblings is not None else [],
            "experiments": {"local": counts["local"], "from_peers": counts["peer"]},
            "peers_connected": len(self.net.peers()),
            "announce": {"mode": self.config.network.announce,
                         "flooding": "kept" if self.announcer.sparse() else "all"},
            "uptime_s": time.time() - self.started_at, "software": f"p2p-research {__version__}",
            "net": self.net_counters(),
            "intake": dict(self.intake.stats),
            "swarm_stats": dict(self.coordinator.stats),
            "dedup": {k: sum(e.dedup_stats.get(k, 0) for e in self.engines) for k in (self.engine.dedup_stats if self.engine else {})},
            "workers": [views.worker_view(e) for e in self.engines],
            "caught_up_results": self.catchup.received,
            "dht": {"records": dht.local_count(), "routing_table": dht.routing_table_size()} if (dht := self._dht()) else {},
            "anti_entropy": {"syncs": self.catchup.syncs, "repaired": self.catchup.repaired},
        }

    def net_counters(self) -> dict[str, Any]:
        from p2p_research.net import libp2p_compat

        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.net.stats.items()}
        counted = libp2p_compat.for_host(self.net.host)  # this node's host only (libp2p_compat/counters.py)
        out["libp2p_dropped_rpcs"] = counted.dropped_rpcs
        out["libp2p_dropped_messages"] = counted.dropped_messages
        out["libp2p_drops_queue_full"] = counted.drops_queue_full
        out["libp2p_drops_queue_closed"] = counted.drops_queue_closed
        out["multistream_refused"] = counted.multistream_refused
        out["gossip_control_ids_dropped"] = counted.control_ids_dropped
        out["inbound_refused_by_address"] = counted.inbound_refused_by_address
        out["inbound_refused_full"] = counted.inbound_refused_full
        out["publish_dropped_per_rpc"] = counted.publish_dropped
        out["libp2p_yamux_write_timeouts"] = counted.yamux_write_timeouts
        out["exchanged_refused_by_subnet"] = self.net.peer_manager.subnet_refusals
        out["banned_peers"] = len(self.net.gossip.scores.banned_peers(time.monotonic()))
        return out

    def swarms_view(self) -> list[dict[str, Any]]:
        """The swarms this node serves (peers using each, the protocols seen on it, stored results and
        best), then protocols stored here whose swarm no connected peer uses now (learned by catch-up)."""
        from p2p_research.research.ids import Budget
        from p2p_research.wire import WireError, decode_receipt

        ctx = self.ctx
        summary = ctx.ledger.protocol_summary()
        budgets: dict[str, str] = {}
        for proto, receipt in ctx.ledger.sample_receipts().items():
            try:
                r = decode_receipt(receipt)
                budgets[proto] = Budget(r.budget_tokens, r.budget_seconds).describe()
            except (WireError, ValueError):
                pass
        for p in self.net.peers():
            about = p.about or {}
            if about.get("protocol") and about.get("budget"):
                budgets.setdefault(about["protocol"], about["budget"])
        budgets[ctx.protocol_id] = ctx.budget.describe()

        def entry(proto: str) -> dict[str, Any]:
            s = summary.get(proto, {"results": 0, "best": None})
            return {"protocol": proto, "budget": budgets.get(proto, "?"), "results": s["results"], "best": s["best"]}

        seen_protocols = {k: set(v) for k, v in self.intake.swarm_protocols.items()}
        for proto in summary:  # protocols learned by catch-up: their swarm follows from their genesis
            swarm = self._swarm_of_protocol(proto)
            if swarm:
                seen_protocols.setdefault(swarm, set()).add(proto)
        out: list[dict[str, Any]] = []
        listed: set[str] = set()
        for sw in self.net.swarms():
            protos = sorted(seen_protocols.get(sw["swarm"], ()))
            if sw["own"] and not self.relay:
                protos = [ctx.protocol_id]
            listed.update(protos)
            out.append({**sw, "protocols": [entry(p) for p in protos]})
        rest: dict[str, list[dict[str, Any]]] = {}  # stored, but no connected peer uses their swarm now
        for p in sorted(summary):
            if p not in listed and (self.relay or p == ctx.protocol_id):
                rest.setdefault(self._swarm_of_protocol(p), []).append(entry(p))
        out += [{"swarm": sw, "peers": 0, "own": False, "protocols": ps} for sw, ps in sorted(rest.items())]
        return out

    def _swarm_of_protocol(self, proto: str) -> str:
        """The swarm id of a stored protocol, from the genesis its results descend from ("" while
        none of its commits is complete here). Cached: a protocol's genesis never changes."""
        from p2p_research.research.io.objects import root_of

        if proto not in self._protocol_swarm:
            if time.time() - self._protocol_unknown.get(proto, -1e18) < UNKNOWN_SWARM_RECHECK_S:
                return ""  # looked for recently and not found: not again on every status call
            for commit in self.ctx.ledger.commits_of(proto):
                genesis = root_of(self.ctx.workspace, commit, limit=2000)
                if genesis:
                    self._protocol_swarm[proto] = swarm_id_of(genesis, proto)
                    break
            else:
                self._protocol_unknown[proto] = time.time()
                return ""
        return self._protocol_swarm[proto]

    def researchers(self) -> int:
        """Other peers of this protocol this node hears from: those connected (relays aside) or heard
        through the mesh within the ownership memory (the genesis rule needs two that agree)."""
        connected = {p.peer_id for p in self.net.peers()
                     if (p.about or {}).get("protocol") == self.ctx.protocol_id and (p.about or {}).get("role") != "relay"}
        return len(connected | set(self.coordinator.heard_peers()))

    def protocol_view(self) -> dict[str, Any]:
        """Peers on another protocol, and in words why their results do not count here."""
        if self.relay:  # a relay counts every protocol: nothing to explain
            return {"other_protocols": [], "protocol_note": ""}
        others: dict[str, dict[str, Any]] = {}
        for p in self.net.peers():
            about = p.about or {}
            proto = about.get("protocol")
            if proto and proto != self.ctx.protocol_id:
                o = others.setdefault(proto, {"protocol": proto, "budget": about.get("budget", "?"), "peers": []})
                o["peers"].append(p.peer_id)
        note = ""
        if others:
            n = sum(len(o["peers"]) for o in others.values())
            budgets = ", ".join(sorted({o["budget"] for o in others.values()}))
            note = (f"{n} connected peer(s) run another protocol (budget {budgets}; ours {self.ctx.budget.describe()}): "
                    "their results do not count here. Nodes share results only with the same target, budget and data"
                    f"{' and hardware class' if self.ctx.budget.is_wall_clock else ''}.")
            for o in others.values():
                o["sibling"] = self.siblings is not None and o["protocol"] in self.siblings
            followed = [o for o in others.values() if o["sibling"]]
            if followed:
                note += (f" {len(followed)} of their protocols share this genesis: their kept changes are tried here "
                         "as ideas, measured and judged under this node's protocol (`swarm` shows which held).")
        return {"other_protocols": list(others.values()), "protocol_note": note}

    def peers_view(self) -> list[dict[str, Any]]:
        announced = views.peer_announcements(self.ctx.ledger)
        out = []
        for p in self.net.peers():
            d = {k: getattr(p, k) for k in ("peer_id", "name", "addrs", "direction", "connected_since", "latency_ms",
                                              "agent_version", "messages_received", "bootstrap")}
            d["announced"] = announced.get(p.peer_id, {"results": 0, "best_val_bpb": None})
            about = p.about or {}
            d["protocol"] = about.get("protocol", "")
            d["budget"] = about.get("budget", "")
            d["role"] = about.get("role", "")
            d["connection"] = p.connection
            d["same_protocol"] = None if not about.get("protocol") else about["protocol"] == self.ctx.protocol_id
            d["reputation"] = self.coordinator.reputation_of(p.peer_id)
            out.append(d)
        return out

    def handlers(self) -> dict[str, Any]:
        ctx = self.ctx

        async def h_id(args: dict) -> Any:
            return self.identity_view()

        async def h_status(args: dict) -> Any:
            return self.status_view()

        async def h_peers(args: dict) -> Any:
            return self.peers_view()

        async def h_experiments(args: dict) -> Any:
            return views.experiments_view(ctx.ledger, self.peer_id, status=args.get("status"), peer=args.get("peer"),
                                          origin=args.get("origin"), limit=args.get("limit"))

        async def h_show(args: dict) -> Any:
            return views.show_view(ctx.ledger, ctx.workspace, str(args.get("exp", "")), self.peer_id)

        async def h_leaderboard(args: dict) -> Any:
            return views.leaderboard_view(ctx.ledger, self.peer_id, int(args.get("limit", 10)))

        async def h_swarm(args: dict) -> Any:
            """The whole swarm at a glance (what `p2p-research swarm` shows), for the dashboard."""
            from p2p_research.research.io.swarm_view import of_ledger

            return of_ledger(ctx.ledger, ctx.protocol_id, self.peer_id)

        async def h_board(args: dict) -> Any:
            return views.board_view(ctx.ledger, int(args.get("limit", 50)))

        async def h_post(args: dict) -> Any:
            text = args.get("text")
            if not isinstance(text, str) or not text.strip():
                raise ControlError("a post needs some text")
            if len(text.encode()) > 16 * 1024:
                raise ControlError("a post is at most 16 KiB")
            post = make_post(self.peer_id, self.name, text)
            ctx.ledger.add_post(post.author, post.name, post.text, post.ts, "local")
            await self.net.publish(post)
            return {"posted": True, "ts": post.ts}

        async def h_dht_get(args: dict) -> Any:
            from p2p_research.wire import WireError
            from p2p_research.wire.records import decode_record, exp_id_of_key

            dht = self._dht()
            if dht is None:
                raise ControlError("this node runs no DHT")
            key = str(args.get("key", ""))
            exp_id = exp_id_of_key(key)  # ValueError with a clear message for a malformed key
            raw, where = await dht.get_raw(key)
            if raw is None:
                return {"key": key, "found": False, "where": where}
            try:
                rec = decode_record(raw, exp_id)
            except WireError as e:
                return {"key": key, "found": True, "valid": False, "error": e.reason, "where": where}
            receipt = rec.receipt_obj()
            return {"key": key, "found": True, "valid": True, "signature": "ok", "where": where,
                    "record": {"exp_id": rec.exp_id, "state": rec.state, "peer": rec.peer, "status": rec.status,
                               "value": rec.value, "commit": rec.commit, "ts": rec.ts, "lease_until": rec.lease_until,
                               "receipt": receipt.to_dict() if receipt else None}}

        async def h_drain(args: dict) -> Any:
            """Stop proposing (the experiment in flight finishes); keep verifying and adopting peers' results."""
            loops = [e.loop for e in self.engines if e.loop is not None]
            if not loops:
                return {"drained": False, "research": self.research_state}
            for loop in loops:
                loop.stop("drained: no new experiments; following the swarm")
            return {"drained": True, "research": self.research_state}

        async def h_config(args: dict) -> Any:
            """The configuration in force: each automatic key's value and where it came from."""
            if self.engine is None:
                raise ControlError(f"research is {self.research_state}: no configuration in force to show")
            return self.engine.effective_config([e.worker_env for e in self.engines])

        return {"id": h_id, "status": h_status, "config": h_config, "dht_get": h_dht_get, "drain": h_drain, "peers": h_peers, "experiments": h_experiments, "show": h_show,
                "leaderboard": h_leaderboard, "swarm": h_swarm, "board": h_board, "post": h_post}
