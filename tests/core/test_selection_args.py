"""`score` and `evaluate` take the same selection flags and defaults."""

from __future__ import annotations

import pytest
from cryodiscovery.core import cli
from cryodiscovery.core.commands.selection_args import selection_options
from cryodiscovery.core.errors import InputError


@pytest.mark.parametrize(
    "head", [["score", "x.star", "--out", "o"], ["evaluate", "--data", "d"]]
)
def test_selection_flags_match_between_commands(head):
    parser = cli.build_parser()
    default = selection_options(parser.parse_args(head))
    assert default.adaptive and default.threshold is None and default.min_particles == 0
    stored = selection_options(parser.parse_args([*head, "--no-adaptive"]))
    assert not stored.adaptive
    chosen = selection_options(
        parser.parse_args([*head, "--target-fnr", "0.05", "--min-particles", "40"])
    )
    assert (chosen.target_fnr, chosen.min_particles) == (0.05, 40)
    both = parser.parse_args([*head, "--threshold", "0.5", "--target-fnr", "0.05"])
    with pytest.raises(InputError, match="give one of them"):
        selection_options(both)
