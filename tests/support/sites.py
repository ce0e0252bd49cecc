"""Generated facilities for tests, benchmarks and demonstrations: each site gets its own
RELION project(s) of labelled Class2D jobs from the core generator, with non-IID
differences (particle shapes, SNR ranges, junk mixes, box sizes), and a
``federation.yaml`` pointing at them.

Public API (tests here and in the deployment suite, benchmarks; keep it stable)::

    SiteSpec(name, shapes, snr_range, junk_kinds, junk_fraction, box_sizes, n_jobs,
             n_classes, particle_range)
    NON_IID_SITES: tuple[SiteSpec, ...]        # five contrasting facilities
    write_site(root, spec, seed, *, enabled=True, ca_certificate=None,
               node_private_key=None, superlink="127.0.0.1:9092", extra=None) -> Path
        # returns the federation.yaml path; data in root/relion/job<k>/...
    site_classes(spec, seed) -> list[ClassAverages]   # the same data, in memory
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from cryodiscovery.core.synthetic.relion_pipeline import write_relion_selection


@dataclass(frozen=True)
class SiteSpec:
    """What one generated facility's history looks like."""

    name: str
    shapes: tuple[str, ...]
    snr_range: tuple[float, float]
    junk_kinds: tuple[str, ...]
    junk_fraction: float = 0.45
    box_sizes: tuple[int, ...] = (64,)
    n_jobs: int = 1
    n_classes: int = 40
    particle_range: tuple[int, int] = (20, 400)

    def simulation(self) -> SimulationConfig:
        """The generator configuration of one of this site's jobs."""
        return SimulationConfig(
            n_classes=self.n_classes,
            box_sizes=self.box_sizes,
            snr_range=self.snr_range,
            junk_fraction=self.junk_fraction,
            junk_kinds=self.junk_kinds,
            shapes=self.shapes,
            particle_range=self.particle_range,
        )


#: Five facilities that differ in what they image and how junk looks there.
NON_IID_SITES: tuple[SiteSpec, ...] = (
    SiteSpec(
        "globular-clean",
        ("globular", "atomic"),
        (0.1, 0.5),
        ("ice", "carbon_edge", "empty"),
        0.35,
        (64, 96),
    ),
    SiteSpec(
        "assemblies-noisy",
        ("assembly",),
        (0.01, 0.05),
        ("featureless_blob", "aggregate", "ghosted"),
        0.5,
        (96, 128),
    ),
    SiteSpec(
        "filaments",
        ("filament",),
        (0.03, 0.2),
        ("streaky", "lattice", "ring", "off_centre"),
        0.45,
        (64,),
    ),
    SiteSpec(
        "membrane",
        ("membrane",),
        (0.02, 0.1),
        ("featureless_blob", "few_particles", "ice"),
        0.55,
        (64, 96),
    ),
    SiteSpec(
        "mixed",
        ("globular", "assembly", "membrane"),
        (0.01, 0.3),
        ("carbon_edge", "off_centre", "empty", "ring"),
        0.4,
        (64, 128),
    ),
)


def site_classes(spec: SiteSpec, seed: int) -> list[ClassAverages]:
    """The site's jobs as class averages with labels (one set per job)."""
    children = np.random.SeedSequence(seed).spawn(spec.n_jobs)
    return [
        simulate_class_averages(spec.simulation(), int(child.generate_state(1)[0]))
        for child in children
    ]


def write_site(
    root: Path,
    spec: SiteSpec,
    seed: int,
    *,
    enabled: bool = True,
    ca_certificate: Path | None = None,
    node_private_key: Path | None = None,
    superlink: str = "127.0.0.1:9092",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the site's RELION project (Class2D + Select jobs) and its federation.yaml.

    Parameters
    ----------
    root:
        The site's folder (created): ``relion/`` holds the project.
    enabled, ca_certificate, node_private_key, superlink:
        Written to federation.yaml (the credentials must exist when enabled).
    extra:
        More top-level keys for federation.yaml (e.g. ``caps``, ``privacy``,
        ``model_path``); they replace the defaults written here.
    """
    project = root / "relion"
    for k, classes in enumerate(site_classes(spec, seed)):
        job = write_relion_class2d(
            classes, project, f"Class2D/job{2 * k + 1:03d}", seed=seed + k
        )
        write_relion_selection(job, classes.labels, f"Select/job{2 * k + 2:03d}")
    config: dict[str, Any] = {
        "enabled": enabled,
        "superlink": superlink,
        "data": {"relion_projects": [str(project)]},
        "model_path": str(root / "model" / "cryodiscovery.pt"),
        "caps": {"local_epochs": 1, "batch_size": 16},
    }
    if ca_certificate is not None:
        config["ca_certificate"] = str(ca_certificate)
    if node_private_key is not None:
        config["node_private_key"] = str(node_private_key)
    config.update(dict(extra or {}))
    path = root / "federation.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
