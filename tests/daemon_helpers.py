"""Starting real node daemons as OS processes for system tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import CLI, ROOT, popen_cli, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()) -> None:
        self.home = home
        self.args = args
        self.wrap = wrap  # a command the daemon runs under, e.g. ("ip", "netns", "exec", "home1")
        self.env = env  # added to this process's environment for the daemon (e.g. a PATH with scripted agents)
        self.proc: subprocess.Popen | None = None
        self._signalled = False
        self.peer_id = ""
        self.addrs: list[str] = []

    def start(self, timeout: float = 60.0) -> Daemon:
        return self.spawn().ready(timeout)

    def spawn(self) -> Daemon:
        """Start the process without waiting for it (`ready` waits): daemons that do not need each other
        to be up start side by side."""
        self.errlog = open(self.home / "test-daemon.err", "ab")
        self._signalled = False
        argv = ["node", "start", "--home", str(self.home), *self.args]
        env = {**os.environ, **self.env} if self.env else None
        if self.wrap:  # another command execs the daemon: no fork server
            self.proc = subprocess.Popen([*self.wrap, *CLI, *argv], cwd=ROOT, stdout=subprocess.PIPE,
                                         stderr=self.errlog, text=True, start_new_session=True, env=env)
        else:
            self.proc = popen_cli(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.errlog, text=True,
                                  start_new_session=True, env=env)
        return self

    def ready(self, timeout: float = 60.0) -> Daemon:
        """Wait until the daemon prints its control socket (its peer id and addresses come first)."""
        assert self.proc is not None
        deadline = time.time() + timeout
        assert self.proc.stdout is not None
        self.addrs = []
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"daemon exited: {self.stderr()[-2000:]}")
            if line.startswith("peer id:"):
                self.peer_id = line.split()[2]
            elif line.startswith("address:"):
                self.addrs.append(line.split()[1])
            elif line.startswith("control:"):
                return self
        raise AssertionError("daemon did not start in time")

    def stderr(self) -> str:
        try:
            return (self.home / "test-daemon.err").read_text(errors="replace")
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = run_cli([*args, "--home", str(self.home)], timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"{args}: {r.stderr}")
        return r

    # `p2p-research CMD --json` prints the daemon's answer to CMD as it is: a poll asks the control
    # socket from this process, which spares a CLI process (0.3 CPU-s) per poll, a sixth of a daemon
    # test's CPU. `cli_json` goes through the CLI; test_daemon checks that both agree.
    DIRECT = {"status": {}, "peers": {},
              "experiments": {"status": None, "peer": None, "origin": None, "limit": None}}

    def json(self, *args: str):
        if len(args) == 1 and args[0] in self.DIRECT:
            return self.ask(args[0], self.DIRECT[args[0]])
        return self.cli_json(*args)

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def ask(self, cmd: str, args: dict | None = None):
        """The daemon's answer to one control request, as the CLI's --json prints it."""
        from p2p_research.daemon.control_call import call

        resp = call(self.home / "control.sock", cmd, args, timeout=60)
        if not resp or not resp.get("ok"):
            raise AssertionError(f"{cmd}: {resp}")
        return json.loads(json.dumps(resp.get("data"), default=str))

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` once (a second SIGTERM during a daemon's clean stop would end it at once)."""
        if self.proc is not None and self.proc.poll() is None and not self._signalled:
            self._signalled = True
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.terminate(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def wait_for(pred, timeout: float = 60.0, interval: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def surrogate_home(path, seed, target=None, cost=0.5, **sections):
    from p2p_research.research.io.home_init import init_home

    home = init_home(path, target=target)
    cfg = home.load_config()
    cfg.research.objective = "surrogate"
    cfg.research.surrogate_cost_s = cost
    cfg.research.seed = seed
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    home.write_config(cfg)
    return home


def stop_all(daemons):
    """Stop every daemon the way a user does (SIGTERM), all at once: each waits for its run's end and
    its peers' goodbyes, and one after another a swarm's stops added up to seconds per test."""
    for d in daemons:
        d.terminate()
    for d in daemons:
        d.stop()
    for d in daemons:
        d.kill()


def pids_with_cmdline(token: str) -> list[int]:
    """Every process whose /proc/PID/cmdline holds `token` (a run's marker: what must not outlive it)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry.name))
            except OSError:
                continue
    return found
