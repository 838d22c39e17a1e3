"""`simulate`: N real node daemons on loopback for a while, then a report with plots."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from p2p_research.cli.common import CliError, one_line_errors
from p2p_research.errors import P2PResearchError


def register(app: typer.Typer) -> None:
    _register_compare(app)

    @app.command("simulate")
    @one_line_errors
    def simulate(
        nodes: int = typer.Option(35, "--nodes", "-N", min=1, help="Swarm nodes (one OS process each)"),
        duration: str = typer.Option("5m", "--duration", help="How long to run, counted from the first start: 30s, 5m, 300"),
        objective: str = typer.Option("surrogate", "--objective", help="surrogate (no training) | torch (real training)"),
        fanout: int = typer.Option(3, "--fanout", min=1, help="Each node bootstraps from up to this many earlier nodes"),
        churn: float = typer.Option(0.0, "--churn", min=0.0, max=1.0, help="Fraction of nodes SIGKILLed and restarted once"),
        churn_downtime: float = typer.Option(5.0, "--churn-downtime", min=0.0, help="Seconds a killed node stays down"),
        liars: int = typer.Option(0, "--liars", min=0, help="Nodes that announce fabricated improvements"),
        seed: int = typer.Option(0, "--seed", help="Seeds topology, liars, churn and every node's proposer"),
        report: Path | None = typer.Option(None, "--report", help="Report folder (empty or new) [default: sim-report-<time>]"),
        cost: float = typer.Option(15.0, "--cost", min=0.0, help="Surrogate: simulated seconds per run"),
        solo_baseline: bool = typer.Option(True, "--solo-baseline/--no-solo-baseline",
                                           help="Also run one node alone for the same duration, for comparison"),
        verification: str = typer.Option("adaptive", "--verification", help="always | adaptive | never"),
        target_peers: int = typer.Option(6, "--target-peers", min=1, help="network.target_peers of every node"),
        start_rate: float = typer.Option(3.0, "--start-rate", help="Node processes started per second"),
        spawn: str = typer.Option("fork", "--spawn", help="How daemons start: fork (from one process that has "
                                  "imported the node: a start costs 0.2 CPU-s, not 2) | exec (each its own "
                                  "interpreter, as `p2p-research node start`)"),
        budget_tokens: int = typer.Option(0, "--budget-tokens", min=0, help="Torch: training budget (0: harness default)"),
        max_trainings: int = typer.Option(0, "--max-trainings", min=0, help="Torch: concurrent trainings machine-wide (0: one per core)"),
        margin: float | None = typer.Option(None, "--margin", min=0.0,
                                            help="Keep threshold for every node (default: each node's own)"),
        count_from: str = typer.Option("all-up", "--count-from", help="The duration counts from: all-up | first-start"),
        settle: float = typer.Option(180.0, "--settle", min=0.0,
                                     help="After the duration: stop experimenting and wait up to S s for adoptions to settle"),
        dashboard: bool = typer.Option(False, "--dashboard", help="Serve a live page of the whole swarm "
                                       "(127.0.0.1:8642 or a free port); the report keeps a copy"),
        dashboard_addr: str | None = typer.Option(None, "--dashboard-addr", metavar="HOST:PORT",
                                                  help="Serve the swarm's page here (implies --dashboard)"),
        engine: str = typer.Option("process", "--engine", help="process (real daemons, one OS process each) | "
                                   "des (virtual nodes in virtual time over a modelled network: thousands of nodes)"),
        announce: str = typer.Option("auto", "--announce", help="network.announce of every node: all (claims and every "
                                     "result flooded) | kept (kept results, replicas' confirmations, presence; the rest "
                                     "in the DHT) | auto (all up to 100 peers, then kept)"),
        cores: float = typer.Option(0.0, "--cores", min=0.0, help="des: cores of one machine all nodes share "
                                    "(0: one machine per node)"),
        hop_latency_ms: float = typer.Option(-1.0, "--hop-latency-ms", help="des: median latency of one hop "
                                             "(default 40 ms, or 1 ms with --cores: loopback)"),
        loss: float = typer.Option(0.0, "--loss", min=0.0, max=0.99, help="des: share of messages a node misses"),
        nat_share: float = typer.Option(0.0, "--nat-share", min=0.0, max=1.0, help="des: share of nodes behind NAT"),
        combine: bool = typer.Option(True, "--combine/--no-combine", help="des: combine parallel wins (research.combine)"),
        genesis: str = typer.Option("shared", "--genesis", help="research.genesis of every node: shared (about a "
                                    "quarter measure the genesis first, the rest experiment at once) | each"),
        surrogate: str = typer.Option("default", "--surrogate", help="The surrogate's landscape: default | separable | "
                                      "interacting | noisy (3x the noise) | deceptive (a local optimum)"),
        cluster: str | None = typer.Option(None, "--cluster", metavar="ADDRESS", help="Run the real daemons on the "
                                           "machines of a Ray cluster: its address (ray start's, or auto), or local "
                                           "(a one-machine cluster for this run); needs p2p-research[cluster]"),
    ) -> None:
        """Run a swarm (real daemons on loopback, or virtual nodes); write report.json, report.md and plots."""
        import time

        if engine not in ("process", "des"):
            raise CliError("--engine must be process or des", 2)
        if engine == "des":
            if cluster:
                raise CliError("--cluster runs real daemons: it needs --engine process", 2)
            if dashboard or dashboard_addr:
                raise CliError("--dashboard needs --engine process (virtual time runs faster than a page)", 2)
            if objective != "surrogate":
                raise CliError("--engine des runs the surrogate objective only", 2)
            _run_des(nodes=nodes, duration=duration, churn=churn, churn_downtime=churn_downtime, liars=liars, seed=seed,
                     report=report, cost=cost, solo=solo_baseline, verification=verification, start_rate=start_rate,
                     margin=margin, settle=settle, announce=announce, cores=cores, hop_latency_ms=hop_latency_ms,
                     loss=loss, nat_share=nat_share, combine=combine, genesis=genesis, surrogate=surrogate)
            return

        from p2p_research.sim.figures import collect
        from p2p_research.sim.launcher import Simulation
        from p2p_research.sim.monitor import Display
        from p2p_research.sim.options import SimOptions, parse_duration
        from p2p_research.sim.report import write_report

        try:
            opts = SimOptions(report=report or Path(f"sim-report-{time.strftime('%Y%m%d-%H%M%S')}"), nodes=nodes,
                              duration_s=parse_duration(duration), objective=objective, fanout=fanout, churn=churn,
                              churn_downtime_s=churn_downtime, liars=liars, seed=seed, cost_s=cost, solo=solo_baseline,
                              verification=verification, target_peers=target_peers, start_rate=start_rate,
                              budget_tokens=budget_tokens, max_trainings=max_trainings, margin=margin,
                              count_from=count_from, settle_s=settle, announce=announce,
                              genesis=genesis, surrogate=surrogate, spawn=spawn).validate()
            if cluster:
                from p2p_research.sim.cluster import ClusterSimulation

                sim = ClusterSimulation(opts, cluster)
            else:
                sim = Simulation(opts)
        except ValueError as e:
            raise CliError(str(e), 2) from None
        try:
            sim.prepare()
        except Exception as e:
            sim.close()  # a cluster's agents and Ray, started before the homes
            if isinstance(e, ValueError | P2PResearchError):
                raise CliError(str(e), 2) from None
            raise
        display = Display(sim)
        sim.log = display.log
        page = None
        if dashboard or dashboard_addr:
            from p2p_research.dashboard.serve import DEFAULT_ADDR
            from p2p_research.sim.live_page import SimDashboard

            try:
                page = SimDashboard(display.poller, dashboard_addr or DEFAULT_ADDR, sim.root / "dashboard.token").start()
            except ValueError as e:
                raise CliError(str(e), 2) from None
            display.log(f"dashboard: {page.url}")
        display.log(f"{nodes} nodes{' + 1 solo' if solo_baseline else ''}, {opts.duration_s:.0f} s, "
                    f"{objective}, homes under {sim.root / 'nodes'}")
        try:
            with display:
                sim.run(on_tick=display.tick)
        finally:
            display.log(f"stopped every node; writing the report in {sim.root}")
            try:
                m = collect(sim)
                if cluster:
                    m["cluster"] = sim.cluster_report()
                live = None
                if page is not None:
                    from p2p_research.sim.live_page import sim_state

                    live = sim_state(display.poller)
                    page.close()
                    m["dashboard"] = {"url": page.url}
                md = write_report(m, sim.root, ["p2p-research", "simulate", *sys.argv[2:]] if len(sys.argv) > 1
                                  else ["p2p-research", "simulate"], dashboard_state=live)
                display.log(f"report: {md}")
                for c in m["checks"]:
                    display.log(f"{'PASS' if c['passed'] else 'FAIL'} {c['criterion']}: {c['figure']}")
            except Exception as e:
                display.log(f"could not write the report: {e}")
                raise
        if sim.interrupted:
            raise typer.Exit(130)


def _register_compare(app: typer.Typer) -> None:
    from p2p_research.cli.common import print_json

    @app.command("compare")
    @one_line_errors
    def compare_cmd(
        a: Path = typer.Argument(..., help="A report folder (or its report.json): the reference, e.g. real daemons"),
        b: Path = typer.Argument(..., help="Another report, e.g. the DES run of the same swarm"),
        json_out: bool = typer.Option(False, "--json", help="Machine-readable output"),
    ) -> None:
        """Two simulation reports side by side (real daemons against the DES, two seeds, two versions):
        the figures both engines give, and B's difference from A."""
        from rich.console import Console
        from rich.table import Table

        from p2p_research.sim.compare import ReportError, compare, describe, load_report, to_json

        try:
            ma, mb = load_report(a), load_report(b)
        except ReportError as e:
            raise CliError(str(e), 2) from None
        rows = compare(ma, mb)
        if json_out:
            print_json({"a": {"path": str(a), "what": describe(ma)}, "b": {"path": str(b), "what": describe(mb)},
                        "rows": to_json(rows)})
            return
        t = Table(title=f"A: {describe(ma)}\nB: {describe(mb)}", title_justify="left")
        for col in ("figure", "A", "B", "B vs A"):
            t.add_column(col, justify="left" if col == "figure" else "right")
        for r in rows:
            change = "" if r.change_pct is None else f"{r.change_pct:+.1f} %"
            if r.change_pct and r.lower_is_better is not None and abs(r.change_pct) >= 10:
                worse = (r.change_pct > 0) == r.lower_is_better
                change = f"[{'red' if worse else 'green'}]{change}[/]"
            t.add_row(r.figure, "-" if r.a is None else str(r.a), "-" if r.b is None else str(r.b), change)
        Console().print(t)


def _run_des(*, nodes: int, duration: str, churn: float, churn_downtime: float, liars: int, seed: int,
             report: Path | None, cost: float, solo: bool, verification: str, start_rate: float, margin: float | None,
             settle: float, announce: str, cores: float, hop_latency_ms: float, loss: float, nat_share: float,
             combine: bool, genesis: str, surrogate: str) -> None:
    import time

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from p2p_research.sim.des.model import NetModel
    from p2p_research.sim.des.report import write_des_report
    from p2p_research.sim.des.run import DesOptions, DesSimulation
    from p2p_research.sim.options import parse_duration

    folder = report or Path(f"sim-report-{time.strftime('%Y%m%d-%H%M%S')}")
    if folder.exists() and any(folder.iterdir()):
        raise CliError(f"{folder} is not empty", 2)
    latency = hop_latency_ms / 1000 if hop_latency_ms >= 0 else (0.001 if cores else 0.040)
    try:
        opts = DesOptions(nodes=nodes, duration_s=parse_duration(duration), seed=seed, cost_s=cost, churn=churn,
                          churn_downtime_s=churn_downtime, liars=liars, verification=verification, solo=solo,
                          settle_s=settle, margin=margin, start_rate=start_rate, announce=announce, combine=combine,
                          genesis=genesis, surrogate=surrogate,
                          net=NetModel(hop_latency_s=latency, cores=cores, loss=loss, nat_share=nat_share))
        sim = DesSimulation(opts)
    except ValueError as e:
        raise CliError(str(e), 2) from None
    console = Console(stderr=True)
    with Progress(TextColumn("virtual time"), BarColumn(), TextColumn("{task.fields[t]:.0f} / {task.total:.0f} s"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("des", total=1.0, t=0.0)

        def progress(t: float, end: float) -> None:
            bar.update(task, completed=t, total=end, t=t)
        m = sim.run(progress)
    md = write_des_report(m, folder, ["p2p-research", "simulate", *sys.argv[2:]] if len(sys.argv) > 1
                          else ["p2p-research", "simulate", "--engine", "des"])
    typer.echo(f"{nodes} virtual nodes, {m['window_s']:.0f} s window, {m['experiments_completed']} experiments, "
               f"{m['wall_s']} s of wall time; report: {md}")
    for c in m["checks"]:
        typer.echo(f"{'PASS' if c['passed'] else 'FAIL'} {c['criterion']}: {c['figure']}")
