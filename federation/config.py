"""A facility's federation settings (``federation.yaml``), read once into a frozen dataclass.

Public API (other modules and the deployment code rely on it; keep it stable)::

    load_facility_config(path: Path) -> FacilityConfig
    facility_config_from_dict(data: Mapping[str, Any], source: Path) -> FacilityConfig
    FacilityConfig, DataRoots, Caps, DPOptions, PrivacyOptions, AcceptanceOptions
    FACILITY_CONFIG_EXAMPLE: str   # a complete, commented federation.yaml

Every mistake is an :class:`~cryodiscovery.core.errors.InputError` of one line naming the
file and the key, e.g. ``federation.yaml: unknown key 'privacy.dpp' (known: dp, secagg)``.
Relative paths are resolved against the folder that holds the YAML file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryodiscovery.core.errors import InputError
from cryodiscovery.federation.ledger import default_ledger_path

#: Node-config key of a SuperNode holding the path of the facility's ``federation.yaml``
#: (``flower-supernode --node-config 'facility-config="..."'``).
NODE_CONFIG_KEY = "facility-config"
#: Metrics the acceptance gate can compare (computed on the site's validation split).
GATE_METRICS: tuple[str, ...] = ("auc", "balanced_accuracy")


@dataclass(frozen=True)
class DataRoots:
    """Folders to harvest labelled class averages from (absolute paths)."""

    relion_projects: tuple[Path, ...] = ()
    cryosparc_folders: tuple[Path, ...] = ()
    generated_folders: tuple[Path, ...] = ()

    def all(self) -> tuple[tuple[str, Path], ...]:
        """``(kind, root)`` pairs, kind ``"relion"``, ``"cryosparc"`` or ``"generated"``."""
        return (
            tuple(("relion", p) for p in self.relion_projects)
            + tuple(("cryosparc", p) for p in self.cryosparc_folders)
            + tuple(("generated", p) for p in self.generated_folders)
        )


@dataclass(frozen=True)
class Caps:
    """Upper bounds on what one site spends and uses per round."""

    max_classes: int = 20000
    local_epochs: int = 1
    batch_size: int = 32
    threads: int = 0


@dataclass(frozen=True)
class DPOptions:
    """Local differential privacy: clip the round's weights delta to ``clipping_norm``
    (L2) and add Gaussian noise of std ``noise_multiplier * clipping_norm``; every noised
    update is recorded in ``ledger`` and the site stops sending once the total eps
    would pass ``max_epsilon`` (no budget: ``None``; see :mod:`ledger`)."""

    clipping_norm: float
    noise_multiplier: float
    ledger: Path = field(default_factory=default_ledger_path)
    max_epsilon: float | None = None


@dataclass(frozen=True)
class PrivacyOptions:
    """Privacy options; ``dp=None`` means no local noise."""

    dp: DPOptions | None = None
    secagg: bool = False


@dataclass(frozen=True)
class AcceptanceOptions:
    """The gate a new global model must pass before this site's scoring uses it."""

    metric: str = "auc"
    tolerance: float = 0.01


@dataclass(frozen=True)
class PersonaliseOptions:
    """Fine-tune the federation's final model on this site's training split for
    ``epochs`` (0: off) before the acceptance gate; the gate then judges that model."""

    epochs: int = 0
    learning_rate: float = 5e-4


@dataclass(frozen=True)
class FacilityConfig:
    """One facility's federation settings.

    Parameters
    ----------
    source:
        The YAML file this was read from (named in every error message).
    enabled:
        Opt-in switch; a ClientApp refuses to harvest or train while it is false.
    superlink:
        ``host:port`` of the federation server's Fleet API.
    ca_certificate, node_private_key:
        TLS CA certificate and the node's private key (required when enabled).
    data:
        Harvest roots.
    caps:
        Class, epoch and batch limits.
    validation_fraction, validation_seed:
        Local validation split (deterministic per class, see ``harvest``).
    acceptance:
        Acceptance gate settings.
    personalise:
        Local fine-tuning of the final global model before the gate.
    model_path:
        The checkpoint this site's scoring uses (``cryodiscovery score --model``); the
        gate installs accepted global models here. ``None``: never install.
    privacy:
        DP and SecAgg+ options.
    cache_dir:
        Folder of the harvest cache (:mod:`harvest_cache`); ``None``: no cache. The key
        absent means :func:`default_cache_dir`.
    worker_socket:
        Unix socket of the facility's long-running worker (:mod:`worker`); ``None``:
        each message is handled in the process Flower starts for it.
    """

    source: Path
    enabled: bool = False
    superlink: str = ""
    ca_certificate: Path | None = None
    node_private_key: Path | None = None
    data: DataRoots = field(default_factory=DataRoots)
    caps: Caps = field(default_factory=Caps)
    validation_fraction: float = 0.2
    validation_seed: int = 0
    acceptance: AcceptanceOptions = field(default_factory=AcceptanceOptions)
    personalise: PersonaliseOptions = field(default_factory=PersonaliseOptions)
    model_path: Path | None = None
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)
    cache_dir: Path | None = None
    worker_socket: Path | None = None


def _y(value: object) -> str:
    """A YAML scalar (JSON's spelling of numbers and booleans is YAML's)."""
    return json.dumps(value)


#: A complete, commented federation.yaml; the defaults in it are the dataclasses'.
FACILITY_CONFIG_EXAMPLE = f"""\
# federation.yaml: opt-in settings of one facility (a Flower SuperNode "sidecar").
enabled: {_y(FacilityConfig.enabled)}                       # nothing is harvested or sent unless true
superlink: fed.example.org:9092      # host:port the SuperNode connects to (TLS)
ca_certificate: /etc/cryodiscovery/ca.crt        # CA that signed the server certificate
node_private_key: /etc/cryodiscovery/node_key    # this node's EC key (OpenSSH format)
data:                                # where labelled Class2D jobs are harvested from
  relion_projects: [/data/relion/projectA]       # Class2D jobs a Select job selected from
  cryosparc_folders: [/data/cryosparc/P3]        # 2D jobs with Select 2D outputs
  generated_folders: []                          # folders made by the generator
caps:
  max_classes: {_y(Caps.max_classes)}                 # at most this many classes are used
  local_epochs: {_y(Caps.local_epochs)}                    # local epochs per federated round (upper bound)
  batch_size: {_y(Caps.batch_size)}
  threads: {_y(Caps.threads)}                         # CPU threads for training; 0 = torch's default
validation:
  fraction: {_y(FacilityConfig.validation_fraction)}                      # share of classes kept for the local validation split
  seed: {_y(FacilityConfig.validation_seed)}
acceptance:                          # gate before scoring switches to a new global model
  metric: {AcceptanceOptions.metric}                        # auc | balanced_accuracy, on the validation split
  tolerance: {_y(AcceptanceOptions.tolerance)}                    # accept unless worse than the current model by more
model_path: /facility/cryodiscovery/model.pt     # the model scoring uses (--model PATH)
personalise:                         # fine-tune the final global model on this site's
  epochs: {_y(PersonaliseOptions.epochs)}                          #   own classes before the gate (0 = off)
  learning_rate: {_y(PersonaliseOptions.learning_rate)}
# cache_dir: /var/cache/cryodiscovery  # harvest cache (holds class images: stays here);
#                                      # default ~/.cache/cryodiscovery/harvest, null = off
# worker_socket: /run/cryodiscovery/site.sock  # long-running site worker (optional;
#                                      # `cryodiscovery federation worker --config FILE`)
privacy:
  dp:                                # optional: clip each update and add Gaussian noise
    clipping_norm: 1.0               # L2 bound on the weights delta of one round
    noise_multiplier: 0.5            # noise std = noise_multiplier * clipping_norm
    max_epsilon: 10                  # optional budget (delta 1e-5) over all runs
    # ledger: /var/lib/cryodiscovery/privacy-ledger.jsonl   # every noised update sent;
    #                                # default ~/.local/state/cryodiscovery/...
  secagg: {_y(PrivacyOptions.secagg)}                      # SecAgg+ (the server must run with secagg too)
"""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/cryodiscovery/harvest``, else ``~/.cache/cryodiscovery/harvest``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cryodiscovery" / "harvest"


_TOP_KEYS = (
    "enabled",
    "superlink",
    "ca_certificate",
    "node_private_key",
    "data",
    "caps",
    "validation",
    "acceptance",
    "personalise",
    "model_path",
    "privacy",
    "cache_dir",
    "worker_socket",
)
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")


class _Reader:
    """Typed access to one YAML mapping with errors naming the file and the dotted key."""

    def __init__(self, source: Path, data: Any, prefix: str, known: tuple[str, ...]):
        self.source, self.prefix = source, prefix
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            where = f"'{prefix[:-1]}'" if prefix else "the file"
            raise InputError(source, f"{where} must be a mapping of keys to values")
        for key in data:
            if key not in known:
                raise InputError(
                    source,
                    f"unknown key '{prefix}{key}' (known: {', '.join(known)})",
                )
        self.data: Mapping[str, Any] = data

    def bad(self, key: str, problem: str) -> InputError:
        return InputError(self.source, f"'{self.prefix}{key}' {problem}")

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, f"must be true or false, got {value!r}")
        return value

    def number(self, key: str, default: float | None, lo: float, hi: float) -> float:
        """The number at ``key`` in [lo, hi]; ``default`` when absent (``None``: the
        key is required)."""
        if default is None and key not in self.data:
            raise self.bad(key, "is required")
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.bad(key, f"must be a number, got {value!r}")
        if not lo <= value <= hi:
            raise self.bad(key, f"must be between {lo} and {hi}, got {value}")
        return float(value)

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, f"must be a whole number, got {value!r}")
        if not lo <= value <= hi:
            raise self.bad(key, f"must be between {lo} and {hi}, got {value}")
        return value

    def path(self, key: str, *, must_exist: bool) -> Path | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, f"must be a path, got {value!r}")
        resolved = (self.source.parent / Path(value).expanduser()).resolve()
        if must_exist and not resolved.exists():
            raise self.bad(key, f"does not exist: {resolved}")
        return resolved

    def paths(self, key: str) -> tuple[Path, ...]:
        value = self.data.get(key, [])
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.bad(key, f"must be a list of folders, got {value!r}")
        out = []
        for item in value:
            if not isinstance(item, str) or not item.strip():
                raise self.bad(key, f"must be a list of folders, got item {item!r}")
            folder = (self.source.parent / Path(item).expanduser()).resolve()
            if not folder.is_dir():
                raise self.bad(key, f"is not a folder: {folder}")
            out.append(folder)
        return tuple(out)

    def sub(self, key: str, known: tuple[str, ...]) -> _Reader:
        return _Reader(self.source, self.data.get(key), f"{self.prefix}{key}.", known)


def load_facility_config(path: str | Path) -> FacilityConfig:
    """Read and validate ``federation.yaml``.

    Raises
    ------
    InputError
        The file is missing, is not YAML, or has an unknown key or a bad value.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise InputError(source, "facility configuration file not found")
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(source, f"not valid YAML{where}") from err
    except RecursionError as err:  # PyYAML composes nested nodes recursively
        raise InputError(
            source, "not a facility configuration (nested too deeply)"
        ) from err
    return facility_config_from_dict(data, source)


def facility_config_from_dict(data: Any, source: Path) -> FacilityConfig:
    """Validate an already parsed YAML document; ``source`` names it in errors."""
    top = _Reader(source, data, "", _TOP_KEYS)
    enabled = top.boolean("enabled", FacilityConfig.enabled)
    superlink = top.data.get("superlink", "")
    if not isinstance(superlink, str):
        raise top.bad("superlink", f"must be host:port, got {superlink!r}")
    match = _ADDRESS.match(superlink)
    if superlink and (match is None or not 0 < int(match.group(2)) < 65536):
        raise top.bad("superlink", f"must be host:port, got {superlink!r}")
    ca = top.path("ca_certificate", must_exist=enabled)
    key = top.path("node_private_key", must_exist=enabled)
    if enabled:
        for name, value in (("superlink", superlink), ("ca_certificate", ca)):
            if not value:
                raise top.bad(name, "is required when enabled is true")
        if key is None:
            raise top.bad("node_private_key", "is required when enabled is true")
    d = top.sub("data", ("relion_projects", "cryosparc_folders", "generated_folders"))
    caps = top.sub("caps", ("max_classes", "local_epochs", "batch_size", "threads"))
    val = top.sub("validation", ("fraction", "seed"))
    acc = top.sub("acceptance", ("metric", "tolerance"))
    per = top.sub("personalise", ("epochs", "learning_rate"))
    metric = acc.data.get("metric", AcceptanceOptions.metric)
    if metric not in GATE_METRICS:
        raise acc.bad(
            "metric", f"must be one of {', '.join(GATE_METRICS)}, got {metric!r}"
        )
    return FacilityConfig(
        source=source,
        enabled=enabled,
        superlink=superlink,
        ca_certificate=ca,
        node_private_key=key,
        data=DataRoots(
            relion_projects=d.paths("relion_projects"),
            cryosparc_folders=d.paths("cryosparc_folders"),
            generated_folders=d.paths("generated_folders"),
        ),
        caps=Caps(
            max_classes=caps.integer("max_classes", Caps.max_classes, 1, 10_000_000),
            local_epochs=caps.integer("local_epochs", Caps.local_epochs, 1, 1000),
            batch_size=caps.integer("batch_size", Caps.batch_size, 1, 4096),
            threads=caps.integer("threads", Caps.threads, 0, 1024),
        ),
        validation_fraction=val.number(
            "fraction", FacilityConfig.validation_fraction, 0.05, 0.5
        ),
        validation_seed=val.integer(
            "seed", FacilityConfig.validation_seed, 0, 2**31 - 1
        ),
        acceptance=AcceptanceOptions(
            metric=str(metric),
            tolerance=acc.number("tolerance", AcceptanceOptions.tolerance, 0.0, 1.0),
        ),
        model_path=top.path("model_path", must_exist=False),
        personalise=PersonaliseOptions(
            epochs=per.integer("epochs", PersonaliseOptions.epochs, 0, 100),
            learning_rate=per.number(
                "learning_rate", PersonaliseOptions.learning_rate, 1e-7, 1.0
            ),
        ),
        privacy=_privacy(top.sub("privacy", ("dp", "secagg"))),
        cache_dir=(
            top.path("cache_dir", must_exist=False)
            if "cache_dir" in top.data
            else default_cache_dir()
        ),
        worker_socket=_socket_path(top),
    )


def _socket_path(top: _Reader) -> Path | None:
    path = top.path("worker_socket", must_exist=False)
    if path is not None and len(os.fsencode(path)) > 100:
        raise top.bad("worker_socket", f"is too long for a Unix socket: {path}")
    return path


def _privacy(reader: _Reader) -> PrivacyOptions:
    dp = None
    if reader.data.get("dp") is not None:
        sub = reader.sub(
            "dp", ("clipping_norm", "noise_multiplier", "max_epsilon", "ledger")
        )
        for key in ("clipping_norm", "noise_multiplier"):
            if key not in sub.data:
                raise sub.bad(key, "is required when privacy.dp is given")
        dp = DPOptions(
            clipping_norm=sub.number("clipping_norm", None, 1e-6, 1e6),
            noise_multiplier=sub.number("noise_multiplier", None, 0.0, 1e3),
            ledger=sub.path("ledger", must_exist=False) or default_ledger_path(),
            max_epsilon=(
                sub.number("max_epsilon", None, 1e-3, 1e6)
                if sub.data.get("max_epsilon") is not None
                else None
            ),
        )
    return PrivacyOptions(dp=dp, secagg=reader.boolean("secagg", PrivacyOptions.secagg))
