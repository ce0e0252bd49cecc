"""The model registry: a folder holding every global model version of a federation.

Layout (plain files, so the folder can be shared read-only or served by any static web
server, e.g. the nginx in front of the SuperLink)::

    REGISTRY/index.json          {"format": ..., "versions": [entry, ...]}, oldest first
    REGISTRY/public-index.json   the same without anything that names a facility
    REGISTRY/v0001/model.pt      the global model, a core-format checkpoint
    REGISTRY/v0001/version.json  the entry: checksum, metrics, contributions, run

Each entry says which sites contributed how many examples (and which were dropped and
why), the server-side metrics of that version and the run it came from; the final
version of a run also holds each site's evaluation and acceptance-gate decision
(:meth:`ModelRegistry.record_site_results`). Versions are numbered across runs; files are
written atomically and the index last, so a reader never sees a version whose files are
incomplete. What may be served to anyone (nginx's ``/registry/``) is
``public-index.json`` (as ``index.json``) and the model files: its entries keep the
checksum, round, central metrics and the number of contributing sites, but no site
names, example counts, site results or run settings.

Public API (server_app, cli ``pull``, tests; keep it stable)::

    ModelRegistry(root: Path)
        .publish(write_checkpoint: Callable[[Path], None], *, server_round: int,
                 metrics: Mapping[str, float], contributions: Sequence[Contribution],
                 run: Mapping[str, Any] | None = None) -> ModelVersion
        .record_site_results(version: int, sites: Mapping[str, Mapping[str, Any]])
        .versions() -> list[ModelVersion]; .latest() -> ModelVersion | None
        .get(version: int) -> ModelVersion
    Contribution(site: str, num_examples: int, accepted: bool, reason: str = "")
    ModelVersion(version, checkpoint, sha256, created_utc, server_round, metrics,
                 contributions, run, site_results)
        .public_json() -> dict    # the entry with nothing that names a facility
    list_versions(source: str, *, ca_file: Path | None = None) -> list[ModelVersion]
    download_version(source: str, version: ModelVersion, dest: Path, *,
                     ca_file: Path | None = None) -> Path     # checksum-verified
        # source: a registry folder, or an http(s):// URL of one served as static files
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryodiscovery.core.errors import InputError
from cryodiscovery.core.outputs import atomic_path, sha256_file

log = logging.getLogger(__name__)

REGISTRY_FORMAT = "cryodiscovery-model-registry/1"
INDEX_NAME = "index.json"
PUBLIC_INDEX_NAME = "public-index.json"
CHECKPOINT_NAME = "model.pt"


@dataclass(frozen=True)
class Contribution:
    """What one site gave to one round: ``site`` is its node id (and registered name
    when the SuperLink knows one); ``reason`` says why a dropped update was dropped."""

    site: str
    num_examples: int
    accepted: bool
    reason: str = ""


@dataclass(frozen=True)
class ModelVersion:
    """One global model in the registry.

    Parameters
    ----------
    version:
        1, 2, ... across all runs that published into this registry.
    checkpoint:
        Path of the core-format checkpoint (absolute for a local registry; relative to
        the registry root in ``index.json``).
    sha256:
        Hex SHA-256 of the checkpoint file (checked on every fetch).
    created_utc:
        ISO 8601 time of publication.
    server_round:
        The federated round that produced it (0: the initial model).
    metrics:
        Server-side metrics of this version on the server's validation set.
    contributions:
        Per site: examples contributed, accepted or dropped (and why).
    run:
        Run information (run id, strategy, settings).
    site_results:
        Per site (its registered name): the site's metrics of this model on its
        validation split and its acceptance-gate decision (final version of a run).
    """

    version: int
    checkpoint: Path
    sha256: str
    created_utc: str
    server_round: int
    metrics: dict[str, float] = field(default_factory=dict)
    contributions: tuple[Contribution, ...] = ()
    run: dict[str, Any] = field(default_factory=dict)
    site_results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def total_examples(self) -> int:
        """Examples behind the accepted updates of this version's round."""
        return sum(c.num_examples for c in self.contributions if c.accepted)

    def to_json(self, root: Path | None = None) -> dict[str, Any]:
        """A JSON-ready entry; ``checkpoint`` relative to ``root`` when given."""
        entry = asdict(self)
        path = self.checkpoint
        entry["checkpoint"] = str(path.relative_to(root) if root else path)
        entry["metrics"] = {  # JSON has no inf/nan: "inf", "-inf", null (nan)
            k: v if math.isfinite(v) else (None if math.isnan(v) else str(v))
            for k, v in self.metrics.items()
        }
        return entry

    def public_json(self) -> dict[str, Any]:
        """The entry as served to anyone: checksum, round, central metrics, run id and
        the number of accepted sites; no site names, example counts, site results or
        settings (which name files on the server)."""
        entry = self.to_json()
        entry["checkpoint"] = f"{self.checkpoint.parent.name}/{self.checkpoint.name}"
        entry["run"] = {k: self.run[k] for k in ("run_id", "strategy") if k in self.run}
        entry["contributions"] = []
        entry["site_results"] = {}
        entry["sites"] = sum(c.accepted for c in self.contributions)
        return entry

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], root: Path | None) -> ModelVersion:
        """Inverse of :meth:`to_json`; ``root`` resolves the relative checkpoint."""
        ckpt = Path(str(entry["checkpoint"]))
        return cls(
            version=int(entry["version"]),
            checkpoint=(root / ckpt) if root is not None else ckpt,
            sha256=str(entry["sha256"]),
            created_utc=str(entry["created_utc"]),
            server_round=int(entry["server_round"]),
            metrics={
                str(k): (math.nan if v is None else float(v))  # float("inf") too
                for k, v in dict(entry.get("metrics", {})).items()
            },
            contributions=tuple(
                Contribution(
                    site=str(c["site"]),
                    num_examples=int(c["num_examples"]),
                    accepted=bool(c["accepted"]),
                    reason=str(c.get("reason", "")),
                )
                for c in entry.get("contributions", [])
            ),
            run=dict(entry.get("run", {})),
            site_results={
                str(k): dict(v) for k, v in dict(entry.get("site_results", {})).items()
            },
        )


def parse_index(text: str, source: str, root: Path | None) -> list[ModelVersion]:
    """Versions listed in an ``index.json`` text (``source`` names it in errors)."""
    try:
        data = json.loads(text)
        if data.get("format") != REGISTRY_FORMAT:
            raise InputError(source, f"not a model registry index ({REGISTRY_FORMAT})")
        versions = [ModelVersion.from_json(e, root) for e in data["versions"]]
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise InputError(source, f"corrupt registry index ({err})") from err
    return sorted(versions, key=lambda v: v.version)


class ModelRegistry:
    """A registry folder on this machine (created on first publish)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def versions(self) -> list[ModelVersion]:
        """All versions, oldest first (empty for a new registry)."""
        if not self.index_path.exists():
            return []
        return parse_index(self.index_path.read_text(), str(self.index_path), self.root)

    def latest(self) -> ModelVersion | None:
        """The newest version, or ``None`` when nothing was published yet."""
        versions = self.versions()
        return versions[-1] if versions else None

    def get(self, version: int) -> ModelVersion:
        """One version by number (``InputError`` when absent)."""
        for v in self.versions():
            if v.version == version:
                return v
        raise InputError(self.index_path, f"no version {version} in the registry")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def publish(
        self,
        write_checkpoint: Callable[[Path], None],
        *,
        server_round: int,
        metrics: Mapping[str, float],
        contributions: Sequence[Contribution] = (),
        run: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Add a version: ``write_checkpoint(path)`` writes the model file.

        The checkpoint and ``version.json`` are written atomically into a new
        ``vNNNN`` folder, then the index is replaced atomically.
        """
        with self._lock():
            versions = self.versions()
            number = versions[-1].version + 1 if versions else 1
            folder = self.root / f"v{number:04d}"
            folder.mkdir(parents=True, exist_ok=True)  # may hold a failed attempt
            ckpt = folder / CHECKPOINT_NAME
            with atomic_path(ckpt) as tmp:
                write_checkpoint(tmp)
            entry = ModelVersion(
                version=number,
                checkpoint=ckpt,
                sha256=sha256_file(ckpt),
                created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                server_round=int(server_round),
                metrics={str(k): float(v) for k, v in metrics.items()},
                contributions=tuple(contributions),
                run=dict(run or {}),
            )
            self._write_version(entry)
            self._write_indexes([*versions, entry])
        log.info("registry %s: published version %d", self.root, number)
        return entry

    def record_site_results(
        self, version: int, sites: Mapping[str, Mapping[str, Any]]
    ) -> ModelVersion:
        """Add each site's results for ``version`` (its metrics on its validation split
        and its gate decision, keyed by site name) to the version's entry; the model
        file and its checksum are unchanged. Not in the public index."""
        with self._lock():
            versions = self.versions()
            for i, v in enumerate(versions):
                if v.version == version:
                    merged = {
                        **v.site_results,
                        **{k: dict(x) for k, x in sites.items()},
                    }
                    versions[i] = replace(v, site_results=merged)
                    self._write_version(versions[i])
                    self._write_indexes(versions)
                    return versions[i]
        raise InputError(self.index_path, f"no version {version} in the registry")

    def _write_version(self, entry: ModelVersion) -> None:
        with atomic_path(entry.checkpoint.parent / "version.json") as tmp:
            tmp.write_text(json.dumps(entry.to_json(self.root), indent=2) + "\n")

    def _write_indexes(self, versions: Sequence[ModelVersion]) -> None:
        """The public index first, then the full one (which readers here use)."""
        public = {
            "format": REGISTRY_FORMAT,
            "versions": [v.public_json() for v in versions],
        }
        with atomic_path(self.root / PUBLIC_INDEX_NAME) as tmp:
            tmp.write_text(json.dumps(public, indent=2) + "\n")
        index = {
            "format": REGISTRY_FORMAT,
            "versions": [v.to_json(self.root) for v in versions],
        }
        with atomic_path(self.index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=2) + "\n")


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _open_url(url: str, ca_file: Path | None, timeout: float) -> Any:
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    try:
        return urllib.request.urlopen(url, timeout=timeout, context=context)
    except (urllib.error.URLError, OSError) as err:
        raise InputError(url, f"cannot fetch ({getattr(err, 'reason', err)})") from err


def list_versions(
    source: str, *, ca_file: Path | None = None, timeout: float = 60.0
) -> list[ModelVersion]:
    """Versions of a registry folder or of one served at an http(s) URL, oldest first.

    For a URL, checkpoints are relative URLs (``vNNNN/model.pt``) under ``source``.
    """
    if not _is_url(source):
        root = Path(source).expanduser().resolve()
        if not (root / INDEX_NAME).is_file():
            raise InputError(root, f"not a model registry (no {INDEX_NAME})")
        return ModelRegistry(root).versions()
    url = source.rstrip("/") + "/" + INDEX_NAME
    with _open_url(url, ca_file, timeout) as response:
        text = response.read().decode("utf-8")
    return parse_index(text, url, None)


def download_version(
    source: str,
    version: ModelVersion,
    dest: Path,
    *,
    ca_file: Path | None = None,
    timeout: float = 300.0,
) -> Path:
    """Copy one version's checkpoint to ``dest`` (atomically) after checking its SHA-256.

    Raises
    ------
    InputError
        The file cannot be fetched or its checksum differs from the registry entry.
    """
    with atomic_path(dest) as tmp:
        if _is_url(source):
            url = source.rstrip("/") + "/" + version.checkpoint.as_posix()
            with _open_url(url, ca_file, timeout) as response, open(tmp, "wb") as fh:
                shutil.copyfileobj(response, fh)
            where = url
        else:
            if not version.checkpoint.is_file():
                raise InputError(version.checkpoint, "registry checkpoint is missing")
            shutil.copyfile(version.checkpoint, tmp)
            where = str(version.checkpoint)
        digest = sha256_file(tmp)
        if digest != version.sha256:
            raise InputError(
                where,
                f"checksum mismatch (registry {version.sha256[:12]}, file {digest[:12]})",
            )
    return dest
