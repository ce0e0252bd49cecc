"""Errors that mean "the user's input is wrong", reported as one line without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """A user mistake in an input file or option.

    ``str(err)`` is one line naming the file (when there is one) and the problem, e.g.
    ``"Class2D/job013/run_it025_model.star: 100 classes but the stack has 50 images"``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(
            self.problem if self.path is None else f"{self.path}: {self.problem}"
        )


class NothingSelected(InputError):
    """The threshold (or the particle-count rule) kept no class: there is nothing to pass
    on. Every tool ends with this one line, as for any bad input, and writes no selection
    outputs (see README, "When nothing is kept")."""
