"""Logging for a node: one format, project loggers and libp2p's loggers on the same handlers."""

from __future__ import annotations

import logging
import sys
from typing import Any

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: libp2p loggers set ``propagate=False`` and log heavily under churn; they get their own level.
NOISY_LOGGERS = ("libp2p", "multiaddr", "aioquic", "zeroconf", "httpx", "async_service")

#: libp2p's ERRORs for a failed dial, one per address and attempt: the node says it once, with the
#: cause, in its own line ("bootstrap X unreachable: connection refused; retrying in 4 s")
DIAL_NOISE = ("Failed to open TCP stream", "Unexpected error opening TCP stream", "failed to upgrade security for peer",
              "fail to open connection to peer")
#: DCUtR's ERROR for each failed hole-punch attempt: net/nat.py says how the punching went, once
#: ("still relayed after 3 hole punch attempts", "direct connection established")
DCUTR_NOISE = ("Error in DCUtR protocol",)
#: one stream that failed to open is two or three libp2p ERRORs (the multistream handshake's read or
#: write, then the host's, over several lines). Every stream this node opens handles the failure: the
#: catch-up and the object fetch say it in their own line with the peer, and the peer exchange, ping,
#: relay reservations and DHT queries to a departing or busy peer are routine (a peer that stops answering
#: pings is reported as leaving). A catch-up that raced a peer's stop printed both (test_daemon's
#: `test_network_events_are_one_line_each_with_the_cause`, once in a suite run): dropped, as dial errors are
STREAM_OPEN_NOISE = ("MultiselectClient handshake:", "Failed to open stream to peer")
#: the circuit relay's ERRORs when a client closes its reservation stream or a relayed connection
#: ends (e.g. replaced by a direct one): normal events, reported by our own lines in net/nat.py
RELAY_NOISE = ("Error reading from hop stream", "Unexpected error reading from stream", "Error relaying data",
               "Unexpected error handling hop stream", "Error sending status message",
               "Error handling reservation request")
#: identify's ERROR when the peer went away before the node's answer: libp2p puts the whole traceback
#: in the message. A peer that connects and resets at once is routine (a hostile peer in
#: test_hostile_peers does it on purpose, and one such record failed the CI run of 2026-12-07); another
#: cause of the same ERROR still passes, as one line
IDENTIFY_NOISE = ("Error sending identify response",)
#: the causes that make IDENTIFY_NOISE routine: the connection was closed or reset by the peer
GONE_PEER = ("reset by", "Connection closed", "connection closed", "Broken pipe", "StreamReset", "StreamClosed")
LIBP2P_REPEAT_S = 60.0
#: a record logged with ``extra={PROGRESS: True}`` is the daemon's periodic progress line: where a
#: terminal shows the live line instead, only the log file gets it
PROGRESS = "p2p_progress"


class Libp2pNoise(logging.Filter):
    """One line per network event: drop libp2p's per-attempt dial errors (our own line reports the
    cause) and let any other libp2p message through at most once a minute per message template."""

    def __init__(self, repeat_s: float = LIBP2P_REPEAT_S) -> None:
        super().__init__()
        self.repeat_s = repeat_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, "_p2p_noise", None)  # one record, several handlers: one decision
        if decided is None:
            decided = self._decide(record)
            record._p2p_noise = decided  # type: ignore[attr-defined]
        return decided

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] not in NOISY_LOGGERS:
            return True
        msg = str(record.msg)
        if msg.startswith(DIAL_NOISE + STREAM_OPEN_NOISE):
            return False
        if record.name.startswith("libp2p.relay") and msg.startswith(RELAY_NOISE + DCUTR_NOISE):
            return False
        if msg.startswith(IDENTIFY_NOISE) and any(g in str(record.args) for g in GONE_PEER):
            return False
        key = (record.name, msg[:80])
        now = record.created
        if now - self._last.get(key, -1e18) < self.repeat_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        one_line(record)
        return True


def one_line(record: logging.LogRecord) -> None:
    """A libp2p record that passes is one line: its message up to the first newline, without the
    traceback libp2p formats into some messages or attaches as exc_info. The node's own lines say
    what an event means; a page of libp2p's stack for each is the ERROR storm the CLI must not print."""
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a library's malformed record: print its template, never raise in logging
        text = str(record.msg)
    first = text.split("\n", 1)[0].rstrip()
    record.msg, record.args = (first + " [...]" if first != text.rstrip() else first), None
    record.exc_info, record.exc_text, record.stack_info = None, None, None


class ConsoleHandler(logging.Handler):
    """Log lines printed through a rich Console, so that a live line the same console shows stays
    whole: rich clears the live line, prints the log line above it and draws the live line again (a
    plain StreamHandler would write into the middle of it). The periodic progress line is left out:
    the live line says the same, in place."""

    def __init__(self, console: Any) -> None:
        super().__init__()
        self.console = console
        self.addFilter(lambda record: not getattr(record, PROGRESS, False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # soft_wrap: the terminal wraps a long line, rich inserts no line breaks of its own
            self.console.print(self.format(record), markup=False, highlight=False, emoji=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)


def configure_logging(
    level: int | str = logging.INFO,
    logfile: str | None = None,
    *,
    libp2p_level: int | str = logging.ERROR,
    console: Any = None,
) -> list[logging.Handler]:
    """Send ``p2p_research`` logs to stderr (and ``logfile``) in one format; tame libp2p to ``libp2p_level``.

    ``console``: a rich Console on stderr that shows a live line; the log lines go through it
    (``ConsoleHandler``) instead of straight to stderr.
    Idempotent: handlers installed by a previous call are replaced, not duplicated.
    Returns the handlers (tests may inspect or remove them).
    """
    fmt = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [ConsoleHandler(console) if console is not None else logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
    noise = Libp2pNoise()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(noise)
        h._p2p_research = True  # type: ignore[attr-defined]

    def install(logger: logging.Logger, lvl: int | str) -> None:
        for old in [h for h in logger.handlers if getattr(h, "_p2p_research", False)]:
            logger.removeHandler(old)
            old.close()
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(lvl)
        logger.propagate = False

    install(logging.getLogger("p2p_research"), level)
    for name in NOISY_LOGGERS:
        install(logging.getLogger(name), libp2p_level)
    # libp2p creates child loggers with their own level/propagate settings: reset the existing ones
    for name, obj in list(logging.root.manager.loggerDict.items()):
        if isinstance(obj, logging.Logger) and name.split(".")[0] in NOISY_LOGGERS and "." in name:
            obj.setLevel(logging.NOTSET)
            obj.propagate = True
            for h in list(obj.handlers):
                obj.removeHandler(h)
    return handlers
