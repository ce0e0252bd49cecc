"""What a facility manager runs by hand: ``check`` (what would be used and what would be
sent, without contacting anything) and ``pull`` (install the newest global model from the
registry, through the acceptance gate when local validation data are configured).

Public API (``cli`` and tests; keep it stable)::

    check_report(config: FacilityConfig) -> str
    PullResult(version: int, installed: bool, reason: str, path: Path)
    pull_latest(source: str, out: Path, *, config: FacilityConfig | None = None,
                version: int | None = None, force: bool = False,
                ca_file: Path | None = None) -> PullResult
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import load_scorer
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.core.outputs import atomic_path, sha256_file
from cryodiscovery.federation import gate, task
from cryodiscovery.federation.accounting import DP_DELTA, local_dp_epsilon
from cryodiscovery.federation.client_app import current_model
from cryodiscovery.federation.config import DPOptions, FacilityConfig
from cryodiscovery.federation.evaluation import (
    EVALUATE_METRICS,
    RECEIVED_PREFIX,
    TRAIN_METRICS,
)
from cryodiscovery.federation.harvest import Harvest
from cryodiscovery.federation.harvest_cache import cached_harvest
from cryodiscovery.federation.ledger import Ledger, LedgerError
from cryodiscovery.federation.registry import download_version, list_versions

log = logging.getLogger(__name__)


def _used_lines(config: FacilityConfig) -> list[str]:
    data = cached_harvest(config, store=False)  # check writes nothing
    lines = [
        "Would be used (stays at this site):",
        f"  {'kind':<10} {'job':<22} {'selected':>8} {'rejected':>8} "
        f"{'unlabelled':>10} {'duplicates':>10}  root",
    ]
    for s in data.sources:
        lines.append(
            f"  {s.kind:<10} {s.job:<22} {s.n_selected:>8} {s.n_rejected:>8} "
            f"{s.n_unlabelled:>10} {s.n_duplicates:>10}  {s.root}"
        )
    if not data.sources:
        lines.append("  (no labelled Class2D jobs found under the data roots)")
    c = data.label_counts()
    lines.append(
        f"  total: {data.n_train} for training ({c['train_selected']} selected, "
        f"{c['train_rejected']} rejected), {data.n_validation} for local validation "
        f"({c['validation_selected']} selected, {c['validation_rejected']} rejected); "
        f"{data.n_duplicates} duplicate(s), {data.n_conflicts} with conflicting labels "
        f"and {data.n_capped} over the cap of {config.caps.max_classes} left out"
    )
    return lines


def _ledger_line(dp: DPOptions) -> str:
    """What the privacy ledger says this site has spent (read only)."""
    budget = f"{dp.max_epsilon:g}" if dp.max_epsilon is not None else "none"
    try:
        count, epsilon = Ledger(dp.ledger).spent(DP_DELTA)
        spent = f"{count} noised update(s), eps {epsilon:.3g}"
    except LedgerError as err:
        spent = f"UNREADABLE ({err})"
    return f"spent so far ({dp.ledger}): {spent}; budget max_epsilon {budget}"


def _sent_lines(
    config: FacilityConfig, model: ClassScorer | None, origin: str
) -> list[str]:
    dp = config.privacy.dp
    privacy = (
        f"local DP: update delta clipped to L2 {dp.clipping_norm:g}, Gaussian noise "
        f"std {dp.noise_multiplier * dp.clipping_norm:g} per value; site-level "
        f"(eps, delta={DP_DELTA:g}) over 1/10/100 rounds: "
        + "/".join(
            f"{local_dp_epsilon([dp.noise_multiplier] * r, DP_DELTA):.3g}"
            for r in (1, 10, 100)
        )
        if dp is not None
        else "local DP: off"
    )
    if dp is not None:
        privacy += "; " + _ledger_line(dp)
    privacy += (
        "; SecAgg+: required" if config.privacy.secagg else "; SecAgg+: not required"
    )
    lines = [
        f"Would be sent (to {config.superlink or 'the SuperLink'}, nothing else):",
        f"  train reply:    the parameter arrays below + metrics {', '.join(TRAIN_METRICS)}"
        f" (+ {', '.join(RECEIVED_PREFIX + k for k in EVALUATE_METRICS)}: the received"
        " model on the local validation split, when the server asks)",
        f"  evaluate reply: metrics {', '.join(EVALUATE_METRICS)}",
        f"  {privacy}",
    ]
    if model is None:
        lines.append(
            "  parameters: those of the server's global model (no local model to show)"
        )
        return lines
    rows = task.parameter_table(task.named_arrays(model))
    ((sent, sent_shape, sent_dtype, sent_bytes),) = task.parameter_table(
        task.scorer_to_arrays(model)
    )
    lines.append(
        f"  parameters of {origin} (the server's model has its own, same kind), "
        f"sent packed as one array '{sent}' {sent_shape} {sent_dtype}, in this order:"
    )
    lines.append(f"    {'name':<44} {'shape':<18} {'dtype':<8} {'bytes':>10}")
    for name, shape, dtype, nbytes in rows:
        lines.append(f"    {name:<44} {shape!s:<18} {dtype:<8} {nbytes:>10}")
    lines.append(
        f"    total: {len(rows)} arrays, {sent_bytes} bytes "
        f"({sent_bytes / 2**20:.2f} MiB) per update"
    )
    dp = config.privacy.dp
    if dp is not None:  # what local DP does to an update of this size
        values = sum(math.prod(shape) for _, shape, _, _ in rows)
        noise = dp.noise_multiplier * dp.clipping_norm * math.sqrt(values)
        lines.append(
            f"  local DP noise adds L2 norm about {noise:.3g} to an update of norm <= "
            f"{dp.clipping_norm:g} ({values} values): the server's update bound "
            f"(max-update-norm) must allow about {1.2 * noise:.3g}, or it drops them"
        )
    return lines


def check_report(config: FacilityConfig) -> str:
    """The text of ``cryodiscovery federation check``: the facility's settings, the data
    that would be used per source and label, and what would be sent."""
    head = [
        f"Facility configuration: {config.source} "
        f"(enabled: {'yes' if config.enabled else 'no'})",
        f"  SuperLink {config.superlink or '-'}; CA certificate "
        f"{config.ca_certificate or '-'}; node key {config.node_private_key or '-'}",
        f"  caps: {config.caps.max_classes} classes, {config.caps.local_epochs} local "
        f"epoch(s), batch {config.caps.batch_size}; validation split "
        f"{config.validation_fraction:g} (seed {config.validation_seed}); acceptance "
        f"gate: {config.acceptance.metric} within {config.acceptance.tolerance:g}"
        + (
            f" (after {config.personalise.epochs} personalisation epoch(s) at rate "
            f"{config.personalise.learning_rate:g})"
            if config.personalise.epochs
            else ""
        ),
        f"  scoring model: {config.model_path or '(none configured)'}",
        "",
    ]
    model = current_model(config)
    if model is None:
        origin = ""
    elif config.model_path is not None and config.model_path.is_file():
        origin = f"this site's model {config.model_path.name} ({model.name})"
    else:
        origin = f"the shipped default model ({model.name})"
    return "\n".join(
        [*head, *_used_lines(config), "", *_sent_lines(config, model, origin)]
    )


@dataclass(frozen=True)
class PullResult:
    """Outcome of a pull: the registry version, whether it was installed, and why."""

    version: int
    installed: bool
    reason: str
    path: Path


def pull_latest(
    source: str,
    out: Path,
    *,
    config: FacilityConfig | None = None,
    version: int | None = None,
    force: bool = False,
    ca_file: Path | None = None,
) -> PullResult:
    """Install the newest (or the given) registry version at ``out``.

    With ``config`` the acceptance gate runs on the site's validation split against the
    model now at ``out`` (or the shipped default); ``force`` skips it. With ``config``
    and ``personalise.epochs`` > 0 the site first fine-tunes the registry's model on its
    own classes, as at the end of a federation run, and installs that model; otherwise
    the file installed is the registry's own (same SHA-256). ``<out>.json`` records the
    origin (``registry_sha256``: the registry file's; ``sha256``: the installed file's).
    """
    versions = list_versions(source, ca_file=ca_file)
    if not versions:
        raise InputError(source, "the registry holds no model yet")
    chosen = (
        versions[-1]
        if version is None
        else next((v for v in versions if v.version == version), None)
    )
    if chosen is None:
        raise InputError(source, f"no version {version} in the registry")
    if _installed(out, chosen.sha256):
        return PullResult(chosen.version, False, "already installed", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=out.parent) as tmp:
        fetched = download_version(
            source, chosen, Path(tmp) / "model.pt", ca_file=ca_file
        )
        candidate = load_scorer(fetched)
        data = None
        if config is not None and (config.personalise.epochs > 0 or not force):
            data = cached_harvest(config)
        if config is not None and data is not None:
            candidate = gate.personalise_for_site(
                config, candidate, data, chosen.server_round
            )
        accepted, reason = _gate(config, data, candidate, out, force)
        if not accepted:
            return PullResult(chosen.version, False, reason, out)
        record = {
            "source": source,
            "registry_version": chosen.version,
            "registry_sha256": chosen.sha256,
            "server_round": chosen.server_round,
            "gate": reason,
            "personalised_epochs": gate.personalised_epochs(candidate),
            "installed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if record["personalised_epochs"]:
            gate.install_model(candidate, out, record)
            return PullResult(chosen.version, True, reason, out)
        with atomic_path(out) as target:
            target.write_bytes(fetched.read_bytes())
    record.update(sha256=chosen.sha256, model_name=candidate.name)
    with atomic_path(gate.install_record_path(out)) as tmp_record:
        tmp_record.write_text(json.dumps(record, indent=2) + "\n")
    return PullResult(chosen.version, True, reason, out)


def _gate(
    config: FacilityConfig | None,
    data: Harvest | None,
    candidate: ClassScorer,
    out: Path,
    force: bool,
) -> tuple[bool, str]:
    """(install?, why): the acceptance gate against the model at ``out`` when the site's
    validation split is at hand and ``force`` is off."""
    if force:
        return True, "installed with --force (gate skipped)"
    if config is None or data is None:
        return True, "installed without a gate (no --config)"
    site = config if config.model_path == out else _with_model(config, out)
    decision = gate.acceptance_gate(
        candidate,
        current_model(site),
        data.validation,
        config.acceptance.metric,
        config.acceptance.tolerance,
    )
    if not decision.accepted:
        log.warning("acceptance gate: kept the current model: %s", decision.reason)
    return decision.accepted, decision.reason


def _installed(out: Path, registry_sha256: str) -> bool:
    """Whether ``out`` is the registry file with that SHA-256, or was made from it
    (personalised) and is unchanged since."""
    if not out.is_file():
        return False
    sha = sha256_file(out)
    if sha == registry_sha256:
        return True
    try:
        record = json.loads(gate.install_record_path(out).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("registry_sha256") == registry_sha256
        and record.get("sha256") == sha
    )


def _with_model(config: FacilityConfig, out: Path) -> FacilityConfig:
    return replace(config, model_path=out)
