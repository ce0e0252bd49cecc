"""Logging for the apps Flower starts as processes of their own.

A deployment runs the ServerApp and every ClientApp in a process started by a SuperExec,
whose output goes to the SuperExec's log; Flower configures only its own ``flwr`` logger
there, so without a handler the ``cryodiscovery`` INFO lines (rounds, gate decisions,
timings) would be lost and warnings would print without a time or a name.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ensure_logging(level: int = logging.INFO) -> None:
    """Give the ``cryodiscovery`` logger a stderr handler unless logging is configured.

    Does nothing when the root logger or the ``cryodiscovery`` logger already has a
    handler (a test, a benchmark or the CLI configured it), so it is safe to call on
    every message.
    """
    ours = logging.getLogger("cryodiscovery")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    ours.addHandler(handler)
    ours.setLevel(level)


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``; NaN elsewhere)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan
