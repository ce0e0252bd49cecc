"""The facility's privacy ledger: every noised update the site ever sent, across runs.

Local DP's guarantee is about everything a site releases, not one run: a facility that
takes part in ten federations has spent ten runs' worth of privacy. So each noised
update (plain or SecAgg+) appends one JSON line to the ledger *before* it leaves the
site::

    {"time": "2026-11-21T20:41:07Z", "run_id": 123, "server_round": 4,
     "noise_multiplier": 1.0, "clipping_norm": 5.0}

and the site-level (eps, delta) spent so far is the RDP composition of all of them
(:func:`~.accounting.local_dp_epsilon`; it covers the weights the site sent, not the
scalar metrics). With ``privacy.dp.max_epsilon`` set, a site
whose next update would take the total over the budget refuses to train, before any
work. The ledger is never reset by the software; a ledger that cannot be read or written
stops training too (accounting must not silently start again at zero).

Concurrent writers (a SuperNode's ClientApp processes, a site worker) are serialised with
an exclusive ``flock`` on the ledger file. Default location:
``$XDG_STATE_HOME/cryodiscovery/privacy-ledger.jsonl`` (``~/.local/state/...``), shared by
every facility configuration of the user: over-counting, never under-counting.

Public API: ``Ledger(path)`` with ``.entries()``, ``.epsilon(delta)``,
``.spent(delta) -> (count, eps)``, ``.check_budget(noise_multiplier, max_epsilon, delta)``,
``.record(...) -> (count, eps)``;
``default_ledger_path()``; ``BudgetExceeded``, ``LedgerError``;
``check_privacy_budget(dp) -> float`` and ``record_release(dp, run_id, server_round)``
(what a site calls around each noised update).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryodiscovery.federation.accounting import DP_DELTA, local_dp_epsilon

if TYPE_CHECKING:
    from cryodiscovery.federation.config import DPOptions

log = logging.getLogger(__name__)


class LedgerError(RuntimeError):
    """The ledger cannot be read or written (names the file and the problem)."""


class BudgetExceeded(RuntimeError):
    """The next noised update would take the site over its privacy budget."""


def default_ledger_path() -> Path:
    """``$XDG_STATE_HOME/cryodiscovery/privacy-ledger.jsonl``, else under
    ``~/.local/state``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cryodiscovery" / "privacy-ledger.jsonl"


@dataclass(frozen=True)
class Release:
    """One noised update the site sent."""

    time: str
    run_id: int
    server_round: int
    noise_multiplier: float
    clipping_norm: float


class Ledger:
    """The append-only record of this site's noised updates (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Release]:
        """Every recorded release (read under a shared lock); ``LedgerError`` if a line
        is not one."""
        if not self.path.exists():
            return []
        try:
            with self.path.open() as f:
                fcntl.flock(f, fcntl.LOCK_SH)
                text = f.read()
        except OSError as err:
            raise LedgerError(
                f"{self.path}: cannot read the privacy ledger: {err}"
            ) from err
        return self._releases(text)

    def epsilon(self, delta: float) -> float:
        """Site-level eps (at ``delta``) of everything recorded so far."""
        return self.spent(delta)[1]

    def spent(self, delta: float) -> tuple[int, float]:
        """The number of recorded releases and their site-level eps, from one read."""
        entries = self.entries()
        return len(entries), local_dp_epsilon(
            [e.noise_multiplier for e in entries], delta
        )

    def check_budget(
        self, noise_multiplier: float, max_epsilon: float | None, delta: float
    ) -> float:
        """eps after one more release at ``noise_multiplier``; ``BudgetExceeded`` if
        that is over ``max_epsilon`` (no budget: ``None``)."""
        return self._after(self.entries(), noise_multiplier, max_epsilon, delta)

    def record(
        self,
        run_id: int,
        server_round: int,
        noise_multiplier: float,
        clipping_norm: float,
        max_epsilon: float | None = None,
        delta: float = DP_DELTA,
    ) -> tuple[int, float]:
        """Append one release; returns the number recorded and their eps. Under an
        exclusive lock the budget is checked again against what is recorded then (another
        process may have recorded since :meth:`check_budget`): ``BudgetExceeded`` and
        nothing written."""
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "run_id": int(run_id),
            "server_round": int(server_round),
            "noise_multiplier": float(noise_multiplier),
            "clipping_norm": float(clipping_norm),
        }
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                past = self._releases(f.read())
                after = self._after(past, noise_multiplier, max_epsilon, delta)
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:
            raise LedgerError(
                f"{self.path}: cannot write the privacy ledger: {err}"
            ) from err
        return len(past) + 1, after

    def _after(
        self,
        past: list[Release],
        noise_multiplier: float,
        max_epsilon: float | None,
        delta: float,
    ) -> float:
        sigmas = [e.noise_multiplier for e in past]
        after = local_dp_epsilon([*sigmas, noise_multiplier], delta)
        if max_epsilon is not None and after > max_epsilon:
            raise BudgetExceeded(
                f"privacy budget spent: {len(past)} noised update(s) in {self.path} "
                f"give eps {local_dp_epsilon(sigmas, delta):.3g}, one more would give "
                f"{after:.3g} > privacy.dp.max_epsilon {max_epsilon:g}"
            )
        return after

    def _releases(self, text: str) -> list[Release]:
        return [self._parse(n, line) for n, line in _lines(text)]

    def _parse(self, number: int, line: str) -> Release:
        try:
            raw: Any = json.loads(line)
            entry = Release(
                time=str(raw["time"]),
                run_id=int(raw["run_id"]),
                server_round=int(raw["server_round"]),
                noise_multiplier=float(raw["noise_multiplier"]),
                clipping_norm=float(raw["clipping_norm"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise LedgerError(
                f"{self.path}: line {number} is not a ledger entry ({err})"
            ) from err
        if entry.noise_multiplier < 0:
            raise LedgerError(f"{self.path}: line {number} has a negative noise")
        return entry


def check_privacy_budget(dp: DPOptions) -> float:
    """Before training: eps after one more update of this site; ``BudgetExceeded`` if
    that passes ``dp.max_epsilon``, ``LedgerError`` if the ledger is unreadable."""
    return Ledger(dp.ledger).check_budget(dp.noise_multiplier, dp.max_epsilon, DP_DELTA)


def record_release(dp: DPOptions, run_id: int, server_round: int) -> None:
    """Record one noised update (before it leaves the site) and log the total spent;
    ``BudgetExceeded`` (nothing recorded, nothing must be sent) if another process used
    the budget since :func:`check_privacy_budget`."""
    ledger = Ledger(dp.ledger)
    count, epsilon = ledger.record(
        run_id, server_round, dp.noise_multiplier, dp.clipping_norm, dp.max_epsilon
    )
    budget = f"{dp.max_epsilon:g}" if dp.max_epsilon is not None else "none"
    log.info(
        "local DP: update recorded in %s (%d noised update(s) in all); site-level "
        "eps %.3g at delta %g (budget %s)",
        ledger.path,
        count,
        epsilon,
        DP_DELTA,
        budget,
    )


def _lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
