"""Graceful stop for long-running services: SIGTERM/SIGINT set an event the main loop watches."""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so services flush and commit before they exit."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop
