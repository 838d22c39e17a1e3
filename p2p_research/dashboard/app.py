"""The dashboard's ASGI app: a page, its JSON views, a live event stream and `/metrics`.

- `GET /` the page (HTML, JS and CSS ship in the package: it works offline, no CDN);
- `GET /api/state` one snapshot (identity, status, peers, experiments, board); `GET /api/events` the same
  snapshot as Server-Sent Events whenever it changes (the page never reloads);
- `GET /api/experiment/<id>` an experiment's diff and signed receipt;
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
KEEPALIVE_S = 15.0
EXPERIMENTS_SHOWN = 400
MAX_POST_BYTES = 16 * 1024
MAX_STREAMS = 16
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "index.html": "text/html; charset=utf-8"}
SIM_STATIC = {"sim.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
              "sim.html": "text/html; charset=utf-8"}


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

    async def stream() -> AsyncIterator[str]:
        if slots is not None:
            slots.open += 1
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


def make_app(handlers: dict[str, Handler], *, token: str | None, metrics: Callable[[], bytes] | None = None,
             event_interval_s: float = EVENT_INTERVAL_S) -> Starlette:
    """`token`: required on state-changing requests (None: this dashboard listens on loopback only)."""
    pages = {name: _static(name) for name in STATIC}
    slots = StreamSlots()

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in pages:
            return Response("not found", status_code=404)
        return Response(pages[name], media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def state(request: Request) -> Response:
        return _json(await snapshot(handlers))

    async def events(request: Request) -> Response:
        return _event_stream(lambda: snapshot(handlers), event_interval_s, slots)

    async def experiment(request: Request) -> Response:
        try:
            return _json(await handlers["show"]({"exp": request.path_params["exp"]}))
        except Exception as e:  # noqa: BLE001 - a ControlError or ValueError: say it
            return JSONResponse({"error": str(e)}, status_code=404)

    async def post(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"error": "posting needs the dashboard token (see `p2p-research id`)"},
                                    status_code=403)
        body = await request.body()
        if len(body) > MAX_POST_BYTES + 1024:
            return JSONResponse({"error": "a post is at most 16 KiB"}, status_code=413)
        try:
            text = json.loads(body or b"{}").get("text")
            return JSONResponse(await handlers["post"]({"text": text}))
        except Exception as e:  # noqa: BLE001 - ControlError: empty or too long
            return JSONResponse({"error": str(e)}, status_code=400)

    async def prometheus(request: Request) -> Response:
        if metrics is None:
            return Response("no metrics", status_code=404)
        return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[
        Route("/", page), Route("/static/{name}", page), Route("/api/state", state), Route("/api/events", events),
        Route("/api/experiment/{exp}", experiment), Route("/api/board", post, methods=["POST"]),
        Route("/metrics", prometheus),
    ])


def make_sim_app(state: Callable[[], dict[str, Any]], *, event_interval_s: float = EVENT_INTERVAL_S) -> Starlette:
    """The simulation's page: every node's curve, the swarm's best, the solo node, live counters.
    `state` is read on this loop; it must be cheap and thread-safe (the simulation's poller's cache)."""
    pages = {name: _static(name) for name in SIM_STATIC}
    slots = StreamSlots()

    async def page(request: Request) -> Response:
        name = request.path_params.get("name", "sim.html")
        if name not in pages:
            return Response("not found", status_code=404)
        return Response(pages[name], media_type=SIM_STATIC[name], headers={"Cache-Control": "no-cache"})

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
