"""The facility-local harvest cache: reused while the data are unchanged, rebuilt when
any harvested file changes, private, and never a reason for a harvest to fail."""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.classes import ClassAverages, Label, Provenance
from cryodiscovery.federation.config import (
    DataRoots,
    FacilityConfig,
    default_cache_dir,
    load_facility_config,
)
from cryodiscovery.federation.harvest import fingerprints
from cryodiscovery.federation.harvest_cache import (
    cached_harvest,
    forget_memory,
    manifest,
)


@pytest.fixture(autouse=True)
def _fresh_memory() -> None:
    forget_memory()


class CountingFinder:
    """A finder returning fixed labelled sets and counting how often it was asked."""

    def __init__(self, n: int = 30) -> None:
        rng = np.random.default_rng(0)
        labels = np.array([Label.SELECTED, Label.REJECTED] * n, dtype=np.int8)[:n]
        self.sets = [
            ClassAverages.create(
                rng.normal(size=(n, 16, 16)),
                labels=labels,
                provenance=Provenance("relion", ("Class2D/job003/x.star",), "job003"),
            )
        ]
        self.calls = 0

    def __call__(self, root: Path) -> list[ClassAverages]:
        self.calls += 1
        return self.sets


def _config(tmp_path: Path, cache: Path | None) -> FacilityConfig:
    project = tmp_path / "project"
    (project / "Class2D" / "job003").mkdir(parents=True, exist_ok=True)
    (project / "Class2D" / "job003" / "run_it025_data.star").write_text("data_\n")
    return FacilityConfig(
        source=tmp_path / "federation.yaml",
        data=DataRoots(relion_projects=(project,)),
        cache_dir=cache,
    )


def _prints(h: object) -> list[str]:
    return [fp for c in (*h.train, *h.validation) for fp in fingerprints(c)]  # type: ignore[attr-defined]


def test_a_second_harvest_is_read_from_the_cache(tmp_path: Path) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    first = cached_harvest(cfg, finder)
    forget_memory()  # a new process: only the cache file is left
    second = cached_harvest(cfg, finder)
    assert finder.calls == 1
    assert _prints(second) == _prints(first) and second.sources == first.sources
    (cache_file,) = (tmp_path / "cache").iterdir()
    assert oct(cache_file.stat().st_mode & 0o777) == oct(0o600)
    assert (tmp_path / "cache").stat().st_mode & 0o077 == 0


def test_within_a_process_the_harvest_is_kept_in_memory(tmp_path: Path) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    first = cached_harvest(cfg, finder)
    for cache_file in (tmp_path / "cache").iterdir():
        cache_file.unlink()  # not needed again in this process
    assert cached_harvest(cfg, finder) is first and finder.calls == 1


def test_store_false_reads_the_cache_but_writes_nothing(tmp_path: Path) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    cached_harvest(cfg, finder, store=False)
    assert not (tmp_path / "cache").exists()
    cached_harvest(cfg, finder, store=False)  # nor kept in memory
    assert finder.calls == 2
    stored = cached_harvest(cfg, finder)
    forget_memory()
    assert _prints(cached_harvest(cfg, finder, store=False)) == _prints(stored)
    assert finder.calls == 3


@pytest.mark.parametrize("change", ["touch", "add", "remove"])
def test_a_changed_file_under_the_roots_means_a_fresh_harvest(
    tmp_path: Path, change: str
) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    cached_harvest(cfg, finder)
    star = tmp_path / "project" / "Class2D" / "job003" / "run_it025_data.star"
    if change == "touch":
        os.utime(star, ns=(star.stat().st_atime_ns, star.stat().st_mtime_ns + 10**9))
    elif change == "add":
        (star.parent.parent.parent / "Select").mkdir()
        (star.parent.parent.parent / "Select" / "backup_selection.star").write_text("x")
    else:
        star.unlink()
    cached_harvest(cfg, finder)
    assert finder.calls == 2
    cached_harvest(cfg, finder)  # the new state is cached in turn
    assert finder.calls == 2


def test_other_settings_do_not_share_a_cache_file(tmp_path: Path) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    cached_harvest(cfg, finder)
    other = cached_harvest(replace(cfg, validation_seed=5), finder)
    assert finder.calls == 2 and len(list((tmp_path / "cache").iterdir())) == 2
    assert other.n_train + other.n_validation == 30


def test_no_cache_dir_means_no_cache(tmp_path: Path) -> None:
    cfg, finder = _config(tmp_path, None), CountingFinder()
    cached_harvest(cfg, finder)
    cached_harvest(cfg, finder)
    assert finder.calls == 2


def test_a_cache_others_can_write_is_not_loaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    cached_harvest(cfg, finder)
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.chmod(0o622)
    forget_memory()
    with caplog.at_level(logging.WARNING):
        cached_harvest(cfg, finder)
    assert finder.calls == 2 and "not private" in caplog.text


def test_a_corrupt_or_foreign_cache_file_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, finder = _config(tmp_path, tmp_path / "cache"), CountingFinder()
    cached_harvest(cfg, finder)
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"\x80\x05garbage")
    forget_memory()
    with caplog.at_level(logging.WARNING):
        cached_harvest(cfg, finder)
    assert finder.calls == 2 and "unreadable harvest cache" in caplog.text
    cache_file.write_bytes(pickle.dumps({"manifest": (), "harvest": "not a harvest"}))
    forget_memory()
    cached_harvest(cfg, finder)
    assert finder.calls == 3
    forget_memory()
    cached_harvest(cfg, finder)
    assert finder.calls == 3


def test_an_unwritable_cache_does_not_stop_the_harvest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    cfg, finder = _config(tmp_path, blocker / "cache"), CountingFinder()
    with caplog.at_level(logging.WARNING):
        result = cached_harvest(cfg, finder)
    assert result.n_train + result.n_validation == 30
    assert "not written" in caplog.text


def test_manifest_lists_only_harvested_file_types_outside_hidden_folders(
    tmp_path: Path,
) -> None:
    (tmp_path / "Class2D").mkdir()
    for name in ("a.star", "b.mrcs", "c.cs", "note.txt", "movie.tiff", "d.mrc"):
        (tmp_path / "Class2D" / name).write_text("x")
    (tmp_path / ".Nodes").mkdir()
    (tmp_path / ".Nodes" / "hidden.star").write_text("x")
    names = [Path(p).name for p, _, _ in manifest([tmp_path])]
    assert names == ["a.star", "b.mrcs", "c.cs", "d.mrc", "note.txt"]


def test_federation_yaml_cache_dir_default_path_and_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"enabled": False, "data": {"relion_projects": [str(tmp_path)]}}
    path = tmp_path / "federation.yaml"
    path.write_text(repr(base).replace("'", '"').replace("False", "false"))
    assert load_facility_config(path).cache_dir == default_cache_dir()
    path.write_text(path.read_text()[:-1] + ', "cache_dir": "cache"}')
    assert load_facility_config(path).cache_dir == tmp_path / "cache"
    path.write_text(path.read_text().replace('"cache"', "null"))
    assert load_facility_config(path).cache_dir is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "cryodiscovery" / "harvest"
