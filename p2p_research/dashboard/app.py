"""The dashboard's ASGI app: a page, its JSON views, a live event stream and `/metrics`.

- `GET /` the page (HTML, JS and CSS ship in the package: it works offline, no CDN);
- `GET /api/state` one snapshot (identity, status, peers, experiments, board); `GET /api/events` the same
  snapshot as Server-Sent Events whenever it changes (the page never reloads);
- `GET /api/experiment/<id>` an experiment's diff and signed receipt;
- `GET /api/swarm` the whole swarm at a glance (research/io/swarm_view.py, what `p2p-research swarm` shows):
  every node's best over time, kept results by finder, the knobs that paid, the swarm's best over time;
- `POST /api/board` a board post: open on loopback, and with the dashboard token beyond it (anyone
  who can reach the port could otherwise post in this node's name);
- `GET /metrics` Prometheus text format.

Every view calls the daemon's control handlers (``handlers``: name -> async callable taking an args
dict), so the dashboard shows exactly what `p2p-research status --json` and friends show.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

log = logging.getLogger("p2p_research.dashboard")

Handler = Callable[[dict], Awaitable[Any]]
EVENT_INTERVAL_S = 1.0
SWARM_MAX_AGE_S = 5.0  # the swarm view reads every result of the protocol: one read per 5 s, however many pages
KEEPALIVE_S = 15.0
EXPERIMENTS_SHOWN = 400
MAX_POST_BYTES = 16 * 1024
MAX_STREAMS = 16
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
SIM_STATIC = {"sim.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
              "sim.html": "text/html; charset=utf-8"}


async def _metrics_now(metrics: Callable[[], bytes] | None) -> bytes:
    return metrics() if metrics is not None else b""


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")


class StreamSlots:
    """At most `limit` live event streams: each costs a snapshot a second (a page left open in many tabs,
    or someone reaching a non-loopback dashboard, must not take the node's CPU)."""

    def __init__(self, limit: int = MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0


def _event_stream(get: Callable[[], Awaitable[Any]], interval_s: float, slots: StreamSlots | None = None) -> Response:
    """Server-Sent Events: the state whenever it changes (checked every `interval_s`), a comment as
    keep-alive otherwise. Starlette stops the generator when the browser goes away."""
    if slots is not None and slots.open >= slots.limit:
        return Response("too many live views of this node; close one", status_code=503)
    if slots is not None:
        slots.open += 1  # taken at admission: requests arriving together cannot all pass the check

    async def stream() -> AsyncIterator[str]:
        try:
            async for chunk in _changes(get, interval_s):
                yield chunk
        finally:
            if slots is not None:
                slots.open -= 1

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _changes(get: Callable[[], Awaitable[Any]], interval_s: float) -> AsyncIterator[str]:
    """The SSE chunks: the state whenever it changed since the last one, a keep-alive comment otherwise."""
    last, quiet = "", 0.0
    while True:
        data = json.dumps(await get(), default=str, separators=(",", ":"))
        if data != last:
            last, quiet = data, 0.0
            yield f"event: state\ndata: {data}\n\n"
        elif quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ": keepalive\n\n"
        await trio.sleep(interval_s)
        quiet += interval_s


def _pages(types: dict[str, str], index: str) -> Callable[[Request], Awaitable[Response]]:
    """A handler serving the packaged files named in `types` (read once, into memory), `index` at "/"."""
    pages = {name: _static(name) for name in types}

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", index)
        if name not in pages:
            return Response("not found", status_code=404)
        return Response(pages[name], media_type=types[name], headers={"Cache-Control": "no-cache"})

    return page


def _static(name: str) -> bytes:
    return resources.files("p2p_research.dashboard").joinpath("static", name).read_bytes()


async def snapshot(handlers: dict[str, Handler]) -> dict[str, Any]:
    """Everything the page shows, from the control handlers (one consistent read per second)."""
    out: dict[str, Any] = {}
    for key, name, args in (("id", "id", {}), ("status", "status", {}), ("peers", "peers", {}),
                            ("experiments", "experiments", {"limit": EXPERIMENTS_SHOWN}),
                            ("board", "board", {"limit": 50})):
        try:
            out[key] = await handlers[name](args)
        except Exception as e:  # noqa: BLE001 - a view that fails shows as such; the page stays up
            out[key] = {"error": f"{type(e).__name__}: {e}"}
    return out


async def _swarm_now(handlers: dict[str, Handler]) -> dict[str, Any]:
    """The swarm view from the daemon's `swarm` handler; a failure is an answer the page can show."""
    try:
        return await handlers["swarm"]({})
    except Exception as e:  # noqa: BLE001 - the page shows the error; the node stays up
        return {"error": f"{type(e).__name__}: {e}"}


class Shared:
    """One snapshot per interval, however many pages are open (each costs several ledger queries)."""

    def __init__(self, get: Callable[[], Awaitable[Any]], max_age_s: float) -> None:
        self.get = get
        self.max_age_s = max_age_s
        self._at = -1e18
        self._value: Any = None
        self._lock = trio.Lock()

    async def __call__(self) -> Any:
        async with self._lock:
            if trio.current_time() - self._at >= self.max_age_s:
                self._value = await self.get()
                self._at = trio.current_time()
            return self._value


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request's body, or None once it is over `limit` bytes: refused by its Content-Length before
    anything is read, and by a running count while it streams (a body without a length, or one that
    lies about it). Starlette's `request.body()` buffers the whole body first: a 256 MiB post grew the
    node by 512 MB before the size check refused it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                return None
        except ValueError:
            return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def host_allowed(request: Request, loopback_port: int | None) -> bool:
    """On a loopback dashboard, only loopback Host names (a web page elsewhere cannot read or post
    through DNS rebinding), and no foreign Origin on writes. Beyond loopback the token guards writes."""
    if loopback_port is None:
        return True
    host = request.headers.get("host", "")
    if host.endswith("]") or ":" not in host:
        name, port = host, ""
    else:
        name, _, port = host.rpartition(":")
    if name not in LOOPBACK_NAMES or (port and port != str(loopback_port)):
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin not in {f"http://{n}:{loopback_port}" for n in LOOPBACK_NAMES}:
        return False
    return True


def make_app(handlers: dict[str, Handler], *, token: str | None, metrics: Callable[[], bytes] | None = None,
             event_interval_s: float = EVENT_INTERVAL_S, loopback_port: int | None = None) -> Starlette:
    """`token`: required on state-changing requests (None: this dashboard listens on loopback only,
    where `loopback_port` is its port: Host and Origin are checked instead)."""
    slots = StreamSlots()
    shared = Shared(lambda: snapshot(handlers), event_interval_s)
    scrape = Shared(lambda: _metrics_now(metrics), 5.0) if metrics is not None else None
    swarm_now = Shared(lambda: _swarm_now(handlers), SWARM_MAX_AGE_S)

    static_page = _pages(STATIC, "index.html")

    async def page(request: Request) -> Response:
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        return await static_page(request)

    async def state(request: Request) -> Response:
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        return _json(await shared())

    async def events(request: Request) -> Response:
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        return _event_stream(shared, event_interval_s, slots)

    async def experiment(request: Request) -> Response:
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        try:
            return _json(await handlers["show"]({"exp": request.path_params["exp"]}))
        except Exception as e:  # noqa: BLE001 - a ControlError or ValueError: say it
            return JSONResponse({"error": str(e)}, status_code=404)

    async def swarm(request: Request) -> Response:
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        data = await swarm_now()
        return _json(data, 500 if "error" in data else 200)

    async def post(request: Request) -> Response:
        # a JSON body only: a cross-site "simple" request cannot send it without a CORS preflight
        if not host_allowed(request, loopback_port) or \
                request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "posting needs a same-origin JSON request"}, status_code=403)
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "posting needs the dashboard token (see `p2p-research id`)"},
                                    status_code=403)
        body = await _bounded_body(request, MAX_POST_BYTES + 1024)
        if body is None:
            return JSONResponse({"error": "a post is at most 16 KiB"}, status_code=413)
        try:
            text = json.loads(body or b"{}").get("text")
            return JSONResponse(await handlers["post"]({"text": text}))
        except Exception as e:  # noqa: BLE001 - ControlError: empty or too long
            return JSONResponse({"error": str(e)}, status_code=400)

    async def prometheus(request: Request) -> Response:
        if scrape is None:
            return Response("no metrics", status_code=404)
        if not host_allowed(request, loopback_port):
            return Response("forbidden host", status_code=403)
        return Response(await scrape(), media_type="text/plain; version=0.0.4; charset=utf-8")  # at most one per 5 s

    return Starlette(routes=[
        Route("/", page), Route("/static/{name}", page), Route("/api/state", state), Route("/api/events", events),
        Route("/api/experiment/{exp}", experiment), Route("/api/swarm", swarm),
        Route("/api/board", post, methods=["POST"]),
        Route("/metrics", prometheus),
    ])


def make_sim_app(state: Callable[[], dict[str, Any]], *, event_interval_s: float = EVENT_INTERVAL_S) -> Starlette:
    """The simulation's page: every node's curve, the swarm's best, the solo node, live counters.
    `state` is read on this loop; it must be cheap and thread-safe (the simulation's poller's cache)."""
    slots = StreamSlots()

    page = _pages(SIM_STATIC, "sim.html")

    async def current() -> dict[str, Any]:
        return state()

    async def api_state(request: Request) -> Response:
        return _json(state())

    async def events(request: Request) -> Response:
        return _event_stream(current, event_interval_s, slots)

    return Starlette(routes=[Route("/", page), Route("/static/{name}", page), Route("/api/state", api_state),
                             Route("/api/events", events)])


def static_sim_page(state: dict[str, Any]) -> str:
    """The simulation page as one self-contained file with its final state (the report links to it)."""
    html = _static("sim.html").decode()
    css = _static("style.css").decode()
    js = _static("sim.js").decode()
    data = json.dumps(state, default=str).replace("</", "<\\/")
    html = html.replace('<link rel="stylesheet" href="/static/style.css">', f"<style>\n{css}</style>")
    return html.replace('<script src="/static/sim.js"></script>',
                        f"<script>window.__SIM_STATE__ = {data};</script>\n<script>\n{js}</script>")
