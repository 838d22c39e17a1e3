"""Logging for a node: one format, project loggers and libp2p's loggers on the same handlers."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

#: libp2p loggers set ``propagate=False`` and log heavily under churn; they get their own level.
NOISY_LOGGERS = ("libp2p", "multiaddr", "aioquic", "zeroconf", "httpx", "async_service")


def configure_logging(
    level: int | str = logging.INFO,
    logfile: str | None = None,
    *,
    libp2p_level: int | str = logging.ERROR,
) -> list[logging.Handler]:
    """Send ``p2p_research`` logs to stderr (and ``logfile``) in one format; tame libp2p to ``libp2p_level``.

    Idempotent: handlers installed by a previous call are replaced, not duplicated.
    Returns the handlers (tests may inspect or remove them).
    """
    fmt = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
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
