"""A facility-local cache of the harvest, so each Flower message does not re-read the
facility's whole history.

In a deployment every message starts a new ClientApp process, and a harvest reads every
labelled Class2D job under the data roots (STAR files with up to millions of particle
rows for the class counts, the class stacks): tens of seconds per message for a large
facility, twice per round. The cache keeps the finished :class:`~.harvest.Harvest` in
one file per configuration and reuses it while nothing it depends on changed:

- the harvest settings (data roots, class cap, validation split) and the package
  version are part of the file's key;
- a *manifest* of every STAR, MRC and cryoSPARC ``.cs`` file under the data roots
  (path, size, modification time) is stored with it: any new, removed, replaced or
  touched file means a fresh harvest, which then replaces the cache file.

The cache holds class images, so it stays on the facility host like the data: its
folder is created private (0700), files are written atomically with mode 0600, and a
cache file is only loaded when it and its folder belong to this user and nobody else can
write them (it is a pickle). Default folder: ``$XDG_CACHE_HOME/cryodiscovery/harvest``
(``~/.cache/...``); ``cache_dir: null`` in federation.yaml turns the cache off.

Within one process (the site worker, the in-process tests) the last harvests are also
kept in memory, checked against the same manifest. ``cache_dir: null`` turns both off.

Public API: ``cached_harvest(config, finder=None, *, store=True) -> Harvest``, ``forget_memory()``,
``manifest(roots) -> Manifest``, ``CACHE_SUFFIXES``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryodiscovery.federation.config import FacilityConfig
from cryodiscovery.federation.harvest import Finder, Harvest, harvest

log = logging.getLogger(__name__)

#: Files whose change invalidates the cache (everything a harvest reads).
CACHE_SUFFIXES = (".star", ".mrcs", ".mrc", ".cs", ".txt", ".json", ".csv")
FORMAT = 1

Manifest = tuple[tuple[str, int, int], ...]


def manifest(roots: Iterable[Path]) -> Manifest:
    """(path, size, mtime_ns) of every file with a :data:`CACHE_SUFFIXES` suffix under
    ``roots`` (hidden folders skipped, as the harvest skips them), sorted."""
    out: list[tuple[str, int, int]] = []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.endswith(CACHE_SUFFIXES):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                out.append((path, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def _key(config: FacilityConfig) -> str:
    from cryodiscovery.core import __version__

    parts: list[Any] = [
        FORMAT,
        __version__,
        [(kind, str(root)) for kind, root in config.data.all()],
        config.caps.max_classes,
        config.validation_fraction,
        config.validation_seed,
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def _private(path: Path) -> bool:
    """Owned by this user and writable by nobody else."""
    st = path.stat()
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _load(path: Path, current: Manifest) -> Harvest | None:
    if not path.is_file():
        return None
    if not (_private(path) and _private(path.parent)):
        log.warning("%s: not private to this user; ignored", path)
        return None
    try:
        with path.open("rb") as f:
            saved = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        log.warning("%s: unreadable harvest cache (%s); harvesting again", path, err)
        return None
    if not isinstance(saved, dict) or saved.get("manifest") != current:
        return None
    result = saved.get("harvest")
    return result if isinstance(result, Harvest) else None


def _store(path: Path, current: Manifest, result: Harvest) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".harvest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump({"manifest": current, "harvest": result}, f, protocol=5)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: This process's harvests: cache key -> (manifest, harvest); a long-running site worker
#: reuses them without unpickling, and still sees every change of the data files.
_MEMORY: dict[str, tuple[Manifest, Harvest]] = {}
_MEMORY_ENTRIES = 4


def forget_memory() -> None:
    """Drop this process's harvests (the next call behaves as in a new process)."""
    _MEMORY.clear()


def cached_harvest(
    config: FacilityConfig, finder: Finder | None = None, *, store: bool = True
) -> Harvest:
    """:func:`~.harvest.harvest`, reused while the data are unchanged: from this
    process's memory, else from the cache file.

    Every call lists the data files (the manifest), so new, removed or changed jobs are
    always seen. A cache that cannot be written (read-only home, full disk) is logged and
    skipped: the harvest itself never fails because of the cache. ``store=False`` reads
    the cache but writes nothing (``federation check`` changes nothing on disk).
    """
    folder = config.cache_dir
    if folder is None:
        return _timed_harvest(config, finder)
    key = _key(config)
    current = manifest(root for _, root in config.data.all())
    remembered = _MEMORY.get(key)
    if remembered is not None and remembered[0] == current:
        return remembered[1]
    path = folder / f"harvest-{key}.pkl"
    result = _load(path, current)
    if result is not None:
        log.info("harvest reused from %s (%d files unchanged)", path, len(current))
    else:
        result = _timed_harvest(config, finder)
        if not store:
            return result
        try:
            _store(path, current, result)
        except OSError as err:
            log.warning("harvest cache %s not written: %s", path, err)
    if key not in _MEMORY and len(_MEMORY) >= _MEMORY_ENTRIES:
        _MEMORY.pop(next(iter(_MEMORY)))
    _MEMORY[key] = (current, result)
    return result


def _timed_harvest(config: FacilityConfig, finder: Finder | None) -> Harvest:
    start = time.perf_counter()
    result = harvest(config, finder)
    log.info(
        "harvested %d training and %d validation classes in %.2f s",
        result.n_train,
        result.n_validation,
        time.perf_counter() - start,
    )
    return result
