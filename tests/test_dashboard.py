"""The dashboard and /metrics against a real daemon, the page driven by a real headless Chromium.

Chromium and its driver come from Debian (`chromium`, `chromium-driver`: `make browser-tools`, run by
`make test`); selenium drives them. With `P2P_SCREENSHOT_DIR` set, the browser test also saves the
screenshots kept in docs/.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from browser_helpers import CHROMIUM, DRIVER, NO_BROWSER, browser, get
from daemon_helpers import Daemon, stop_all, surrogate_home, wait_for
from prometheus_client.parser import text_string_to_metric_families


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def post(url: str, text: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def huge_post(url: str, token: str, size: int, chunked: bool) -> int:
    """POST `size` bytes of JSON-looking junk, with a Content-Length or chunked; the answer's status (0
    when the node closed the connection without one)."""
    import http.client

    host, port = url.split("//")[1].rstrip("/").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.putrequest("POST", "/api/board")
        c.putheader("Content-Type", "application/json")
        c.putheader("Authorization", f"Bearer {token}")
        c.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))))
        c.endheaders()
        block = b"x" * (1 << 20)
        c.sock.settimeout(3)  # a node that answered and stopped reading leaves the rest unsent
        try:
            for _ in range(size // len(block)):
                c.send(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            if chunked:
                c.send(b"0\r\n\r\n")
        except OSError:
            pass  # the node answered (and closed) while the body was still coming: the point
        c.sock.settimeout(30)
        try:
            return c.getresponse().status
        except (OSError, http.client.HTTPException):
            return 0
    finally:
        c.close()


def test_a_dashboard_address_this_machine_lacks_is_one_line_error(tmp_path):

    from conftest import run_cli

    from p2p_research.research.io.home_init import init_home

    home = init_home(tmp_path / "n")
    for addr, why in (("10.255.255.1:9", "unavailable"), ("nonsense", "invalid dashboard address")):
        r = run_cli(["node", "start", "--home", home.path, "--dashboard-addr", addr], timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert why in r.stderr.strip().splitlines()[-1]


def http_status(host: str, port: int, path: str) -> int:
    import http.client

    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


def metrics(url: str) -> dict[str, float]:
    status, body = get(url + "metrics")
    assert status == 200
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def local_experiments(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("p2p_research_experiments_total{") and "origin=local" in k)


@pytest.mark.slow
def test_metrics_parse_and_move_and_posting_beyond_loopback_needs_the_token(tmp_path):
    home = surrogate_home(tmp_path / "n", 1, cost=1.0)
    d = Daemon(home.path, "-n", "30", "--dashboard-addr", "0.0.0.0:0").start()
    try:
        url = d.json("id")["dashboard"]
        assert url.startswith("http://0.0.0.0:")
        url = url.replace("0.0.0.0", "127.0.0.1")
        first = wait_for(lambda: (m := metrics(url)) and local_experiments(m) >= 1 and m, 60, what="a first experiment")
        assert first["p2p_research_peers{}"] == 0
        assert any(k.startswith("p2p_research_run_duration_seconds_bucket") for k in first)
        assert any(k.startswith("p2p_research_gossip_messages_total") for k in first)
        wait_for(lambda: local_experiments(metrics(url)) > local_experiments(first), 60,
                 what="the experiments counter moves")
        status, body = get(url + "api/state")
        assert status == 200 and json.loads(body)["status"]["peer_id"] == d.peer_id
        # beyond loopback, anything that changes state needs the token
        code, answer = post(url + "api/board", "no token")
        assert code == 403 and "token" in answer["error"]
        token = (home.path / "dashboard.token").read_text().strip()
        assert oct((home.path / "dashboard.token").stat().st_mode & 0o777) == "0o600"
        code, answer = post(url + "api/board", "with **the** token", token)
        assert code == 200 and answer["posted"]
        assert any("with **the** token" in p["text"] for p in d.json("board"))
        code, _ = post(url + "api/board", "x" * 20000, token)
        assert code in (400, 413)
        # an oversized body is refused before it is buffered, by its Content-Length and, when it streams
        # without one, by a running count (a 256 MiB post once grew the node by 512 MB before its 413)
        rss0 = rss_mb(d.proc.pid)
        assert huge_post(url, token, 256 << 20, chunked=False) in (413, 0)
        assert huge_post(url, token, 64 << 20, chunked=True) in (413, 0)
        assert rss_mb(d.proc.pid) - rss0 < 48, (rss0, rss_mb(d.proc.pid))
        assert get(url + "api/state")[0] == 200
        # live views are bounded: the 17th open event stream is refused, and a closed one frees a slot
        import http.client

        host, port = url.split("//")[1].rstrip("/").split(":")
        conns = []
        for _ in range(16):
            c = http.client.HTTPConnection(host, int(port), timeout=10)
            c.request("GET", "/api/events")
            assert c.getresponse().status == 200
            conns.append(c)
        extra = http.client.HTTPConnection(host, int(port), timeout=10)
        extra.request("GET", "/api/events")
        assert extra.getresponse().status == 503
        extra.close()
        conns.pop().close()
        wait_for(lambda: get(url + "api/state")[0] == 200 and http_status(host, int(port), "/api/events") == 200, 20,
                 what="a freed stream slot")
        for c in conns:
            c.close()
    finally:
        stop_all([d])


@pytest.mark.slow
@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NO_BROWSER)
def test_the_dashboard_in_a_real_browser_updates_live_and_posts(tmp_path):
    from selenium.webdriver.common.by import By

    homes = [surrogate_home(tmp_path / n, seed, cost=1.0) for n, seed in (("a", 1), ("b", 2))]
    a = Daemon(homes[0].path, "-n", "60", "--dashboard").start()
    b = Daemon(homes[1].path, "-n", "60", "--bootstrap", a.addrs[0]).start()
    driver = browser()
    try:
        url = a.json("id")["dashboard"]
        assert url.startswith("http://127.0.0.1:")
        # loopback needs no token, but a foreign web page cannot post or read through it: a "simple"
        # cross-site POST (no JSON content type), a foreign Origin, or a rebound Host name are refused
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json", "Origin": "http://evil.example"},
                        {"Content-Type": "application/json", "Host": "evil.example"}):
            req = urllib.request.Request(url + "api/board", data=b'{"text": "csrf"}', method="POST", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == 403
        req = urllib.request.Request(url + "api/state", headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 403
        assert not any("csrf" in p["text"] for p in a.json("board"))
        driver.get(url)
        wait_for(lambda: driver.find_element(By.ID, "node-id").text == a.peer_id, 30, what="the node id on the page")
        baseline = wait_for(lambda: driver.find_element(By.ID, "baseline-val").text not in ("", "-")
                            and driver.find_element(By.ID, "baseline-val").text, 60, what="the baseline val_bpb")
        steps = {round(s["val_bpb"], 6) for s in a.json("status")["baseline"]["lineage"]}
        assert round(float(baseline), 6) in steps   # one of the node's baselines (it may have moved on since)
        driver.execute_script("window.__sameDocument = 42")
        rows = len(driver.find_elements(By.CSS_SELECTOR, "#experiments tbody tr"))
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#experiments tbody tr")) > rows, 60,
                 what="a new result on the page without a reload")
        wait_for(lambda: any(b.peer_id[:16] in r.text for r in driver.find_elements(By.CSS_SELECTOR, "#peers tbody tr")),
                 30, what="the peer in the peers table")
        # the swarm at a glance: both nodes, from the daemon's own `swarm` view
        wait_for(lambda: {a.peer_id, b.peer_id} <= {n["peer"] for n in json.loads(get(url + "api/swarm")[1])["nodes"]},
                 60, what="both nodes in /api/swarm")
        wait_for(lambda: (texts := [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#swarm-nodes tbody tr")])
                 and any(t.startswith("this node") for t in texts) and any(t.startswith(b.peer_id[:16]) for t in texts),
                 30, what="both nodes in the swarm panel")
        assert driver.execute_script("return window.__sameDocument") == 42   # never reloaded
        assert driver.find_element(By.ID, "live").text == "live"
        shots = os.environ.get("P2P_SCREENSHOT_DIR")
        if shots:  # docs/: let the curve grow for a while first
            Path(shots).mkdir(parents=True, exist_ok=True)
            time.sleep(float(os.environ.get("P2P_SCREENSHOT_WAIT", "45")))
            driver.execute_script("window.scrollTo(0, 0)")
            time.sleep(1)
            driver.save_screenshot(str(Path(shots) / "dashboard.png"))
        # click through to a finished experiment: its diff and its signed receipt, checked again
        # (the live table may be redrawn between finding a row and clicking it: a stale row is looked up again)
        def click_a_finished_row() -> bool:
            done = [r for r in driver.find_elements(By.CSS_SELECTOR, "#experiments tbody tr")
                    if r.find_elements(By.CSS_SELECTOR, "td.kept, td.discarded")]
            done[0].click()
            return True

        wait_for(click_a_finished_row, 20, 0.2, what="a click on a finished experiment")
        wait_for(lambda: driver.find_element(By.ID, "detail-diff").text.strip(), 20, what="the diff of an experiment")
        receipts = wait_for(lambda: driver.find_element(By.ID, "detail-receipts").text, 20, what="the receipt")
        assert '"signature": "valid"' in receipts and '"seed"' in receipts
        if shots:
            time.sleep(1)
            driver.save_screenshot(str(Path(shots) / "dashboard-experiment.png"))
        # post to the board from the page; it reaches the other node
        driver.find_element(By.ID, "post-text").send_keys("from the **dashboard** <script>alert(1)</script>")
        driver.find_element(By.CSS_SELECTOR, "#post-form button").click()
        wait_for(lambda: any("from the **dashboard**" in p["text"] for p in b.json("board")), 30,
                 what="the post at the other node")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#board .post b"), 20, what="the post rendered")
        assert not driver.find_elements(By.CSS_SELECTOR, "#board script")   # peer text is escaped
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()
        stop_all([a, b])


# three finders, as in test_ledger's swarm view: (peer, exp, parent, kind, val_bpb, status, description)
SWARM_RUNS = [("me", "g", "", "baseline", 2.0, "baseline", "baseline"),
              ("peerA", "a", "g", "experiment", 1.9, "kept", "LEARNING_RATE 0.002 -> 0.003"),
              ("peerB", "b", "a", "experiment", 1.95, "discarded", "N_LAYER 4 -> 6"),
              ("peerB", "c", "a", "experiment", 1.8, "kept", "N_LAYER 4 -> 5; WARMUP 0.1 -> 0.2"),
              ("peerA", "d", "c", "experiment", None, "crash", "code: GPT.forward; +3 -1 lines"),
              ("peerA", "e", "c", "experiment", 1.75, "kept", "WARMUP 0.1 -> 0.3")]


def swarm_ledger(path: Path) -> Path:
    """A ledger holding results of three nodes ("me" is the node serving the dashboard)."""
    from p2p_research.store.ledger import Ledger, Run

    led = Ledger(path)
    try:
        for i, (peer, exp, parent, kind, value, status, desc) in enumerate(SWARM_RUNS):
            led.add_experiment(exp * 40, "p", parent * 40, "t" + exp, exp * 40, desc, "peer")
            rid = led.start_run(Run(exp_id=exp * 40, commit_id=exp * 40, protocol_id="p", kind=kind, status="running",
                                    origin="local" if peer == "me" else "peer", peer=peer, parent=parent * 40,
                                    seed=0, description=desc))
            led.finish_run(rid, status, val_bpb=value, finished_at=time.time() - 600 + 60 * i)
    finally:
        led.close()
    return path


class ServedApp:
    """The dashboard app on a real socket, served by hypercorn on trio in a thread of the test (no daemon):
    `handlers` is called there, so what it opens (a ledger) belongs to that thread."""

    def __init__(self, make_handlers, tmp_path: Path) -> None:
        import threading

        self.make_handlers, self.tmp_path = make_handlers, tmp_path
        self.url = ""
        self._ready = threading.Event()
        self._stop = None
        self._token = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import trio

        from p2p_research.dashboard.app import make_app
        from p2p_research.dashboard.serve import bind, serve

        async def main() -> None:
            bound = bind("127.0.0.1:0", self.tmp_path / "dashboard.token", fall_back=False)
            self.url, self._token = bound.url, trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._stop = nursery.cancel_scope
                await nursery.start(serve, make_app(self.make_handlers(), token=None, loopback_port=bound.port), bound)
                self._ready.set()

        try:
            trio.run(main)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self._error = e
            self._ready.set()

    def __enter__(self) -> ServedApp:
        self._thread.start()
        assert self._ready.wait(30) and self._error is None, self._error
        return self

    def __exit__(self, *exc: object) -> None:
        import trio

        if self._stop is not None:
            trio.from_thread.run_sync(self._stop.cancel, trio_token=self._token)
        self._thread.join(10)


def swarm_handlers(ledger_path: Path) -> dict:
    """The daemon's views, the swarm from a real ledger (through swarm_view, as the daemon's `swarm`
    handler does), the rest as a node that just started."""
    from p2p_research.research.io.swarm_view import of_ledger
    from p2p_research.store.ledger import Ledger

    held: dict[str, Ledger] = {}

    async def swarm(args: dict) -> dict:
        led = held.setdefault("ledger", Ledger(ledger_path))
        return of_ledger(led, "p", "me")

    async def const(value):
        return value

    status = {"peer_id": "me", "name": "me", "swarm": "s", "protocol_id": "p", "budget": "400000 tokens",
              "research": "idle", "baseline": {"val_bpb": 1.75, "lineage": []}, "peers_connected": 0,
              "workers": [], "uptime_s": 1.0}
    return {"id": lambda a: const({"peer_id": "me"}), "status": lambda a: const(status),
            "peers": lambda a: const([]), "experiments": lambda a: const([]), "board": lambda a: const([]),
            "swarm": swarm}


def test_the_swarm_at_a_glance_endpoint_and_panel(tmp_path):
    """`/api/swarm` answers what `p2p-research swarm` shows for a ledger with three nodes' results (each
    node's best, kept results by finder, the knobs that paid, the swarm's best over time), and a real
    browser renders the panel with those rows."""
    ledger = swarm_ledger(tmp_path / "l.sqlite")
    with ServedApp(lambda: swarm_handlers(ledger), tmp_path) as served:
        status, body = get(served.url + "api/swarm")
        assert status == 200, body
        v = json.loads(body)
        assert v["protocol_id"] == "p" and v["runs"] == 6 and v["kept"] == 3
        assert [(n["peer"], n["kept"], n["best"], n["self"]) for n in v["nodes"]] == [
            ("peerA", 2, 1.75, False), ("peerB", 1, 1.8, False), ("me", 0, 2.0, True)]
        assert [b for _, b in v["swarm_best_over_time"]] == [2.0, 1.9, 1.8, 1.75]
        knobs = {k["knob"]: k for k in v["knobs"]}
        assert (knobs["N_LAYER"]["tried"], knobs["N_LAYER"]["kept"]) == (2, 1)
        assert abs(knobs["WARMUP"]["gain"] - 0.15) < 1e-9 and v["knobs"][0]["knob"] == "WARMUP"
        assert get(served.url.replace("127.0.0.1", "localhost") + "api/swarm")[0] == 200
        if not (CHROMIUM and DRIVER):
            pytest.skip(NO_BROWSER)
        from selenium.webdriver.common.by import By

        driver = browser()
        try:
            driver.get(served.url)

            def rows(table: str) -> list[str]:
                return [r.text for r in driver.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]
            nodes = wait_for(lambda: len(rows("swarm-nodes")) == 3 and rows("swarm-nodes"), 30,
                             what="the swarm's nodes on the page")
            assert nodes[0].split()[:4] == ["peerA", "3", "1.750000", "2"], nodes
            assert nodes[2].startswith("this node") and "2.000000" in nodes[2], nodes
            assert [r.split()[:3] for r in rows("swarm-finders")] == [["peerA", "2", "67%"], ["peerB", "1", "33%"]]
            knob_rows = rows("swarm-knobs")
            assert knob_rows[0].split()[:4] == ["WARMUP", "2", "2", "0.150000"], knob_rows
            assert any(r.startswith("N_LAYER 2 1 0.100000") for r in knob_rows), knob_rows
            assert driver.find_elements(By.ID, "swarm-best-line")
            assert len(driver.find_elements(By.CSS_SELECTOR, "#swarm-chart path.node-best")) == 3
            assert "3 node(s), 6 results, 3 kept, best 1.750000" in driver.find_element(By.ID, "swarm-summary").text
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert not errors, errors
        finally:
            driver.quit()
