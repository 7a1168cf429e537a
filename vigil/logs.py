"""One log format for every Vigil process (jobs, sinks, relay, edge, local servers, CLI).

The stack's supervisor and `vigil stack logs` read these lines side by side, so every process writes the
same shape: time, level, logger, message.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str | int = logging.INFO) -> None:
    """Configure the root logger once per process; ``level`` is a name ("info", "DEBUG") or a number."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=FORMAT)
