"""Test data for the cryoSPARC adapter: tiny, well-formed 2D classification datasets, a
project seeded into the API test double, and selectors that stand in for the model."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.selection import Selection
from cryosparc.dataset import Dataset
from fake_cryosparc import SLOT_FIELDS, FakeCryosparc

EMAIL, PASSWORD = "ali@example.com", "correct horse"
CTF = [
    ("type", "O"),
    ("accel_kv", "f4"),
    ("cs_mm", "f4"),
    ("df1_A", "f4"),
    ("df2_A", "f4"),
]
LOCATION = [
    ("micrograph_path", "O"),
    ("micrograph_uid", "u8"),
    ("center_x_frac", "f4"),
    ("center_y_frac", "f4"),
]


@dataclass
class Class2DData:
    """A tiny 2D classification: templates, particles, the class-average stack."""

    templates: Dataset
    particles: Dataset
    stack: np.ndarray
    stack_path: str
    psize: float = 2.0
    extra: dict[str, object] = field(default_factory=dict)

    def mrc_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "stack.mrc"
            with mrcfile.new(path) as fh:
                fh.set_data(self.stack)
                fh.voxel_size = self.psize
            return path.read_bytes()


def make_class2d(
    n_classes: int = 6,
    n_particles: int = 90,
    box: int = 24,
    seed: int = 0,
    juid: str = "J1",
) -> Class2DData:
    """Random but well-formed class_averages and particles of a 2D job ``juid``."""
    rng = np.random.default_rng(seed)
    stack_path = f"{juid}/{juid}_020_class_averages.mrc"
    templates = Dataset.allocate(
        n_classes,
        [
            ("blob/path", "O"),
            ("blob/idx", "u4"),
            ("blob/shape", "2u4"),
            ("blob/psize_A", "f4"),
            ("blob/res_A", "f4"),
        ],
    )
    templates["blob/path"] = np.array([stack_path] * n_classes, dtype=object)
    templates["blob/idx"] = np.arange(n_classes)
    templates["blob/shape"] = np.tile([box, box], (n_classes, 1))
    templates["blob/psize_A"] = 2.0
    templates["blob/res_A"] = rng.uniform(6, 30, n_classes)
    layout = [(f"blob/{n}", t) for n, t in SLOT_FIELDS["blob"]] + [
        (f"alignments2D/{n}", t) for n, t in SLOT_FIELDS["alignments2D"]
    ]
    layout += [(f"ctf/{n}", t) for n, t in CTF] + [
        (f"location/{n}", t) for n, t in LOCATION
    ]
    particles = Dataset.allocate(n_particles, layout)
    particles["blob/path"] = np.array(
        [f"J0/extract/mic{i % 7}_particles.mrc" for i in range(n_particles)],
        dtype=object,
    )
    particles["blob/idx"] = np.arange(n_particles) % 50
    particles["blob/shape"] = np.tile([box * 2, box * 2], (n_particles, 1))
    particles["blob/psize_A"] = 1.0
    # every class gets particles; class 0 gets the most
    particles["alignments2D/class"] = np.concatenate(
        [np.arange(n_classes), rng.integers(0, n_classes, n_particles - n_classes)]
    )
    particles["alignments2D/class_posterior"] = rng.uniform(0.2, 1.0, n_particles)
    particles["alignments2D/class_ess"] = rng.uniform(1.0, 3.0, n_particles)
    particles["alignments2D/pose"] = rng.uniform(0, 6.28, n_particles)
    particles["ctf/type"] = np.array(["spline"] * n_particles, dtype=object)
    particles["ctf/df1_A"] = rng.uniform(5000, 25000, n_particles)
    particles["location/micrograph_path"] = np.array(
        [f"J0/mic{i % 7}.mrc" for i in range(n_particles)], dtype=object
    )
    particles["location/center_x_frac"] = rng.uniform(0, 1, n_particles)
    stack = rng.normal(size=(n_classes, box, box)).astype(np.float32)
    return Class2DData(templates, particles, stack, stack_path)


def seed_project(fake: FakeCryosparc, data: Class2DData) -> dict[str, str]:
    """P1 (W1, W2) with a completed 2D job, a refinement, and a running 2D job."""
    fake.add_user(EMAIL, PASSWORD)
    fake.add_project("P1", ("W1", "W2"))
    outputs = {
        "particles": ("particle", data.particles),
        "class_averages": ("template", data.templates),
    }
    uids = {
        "class2d": fake.add_job("P1", "W1", "class_2D_new", outputs=outputs),
        "refine": fake.add_job(
            "P1",
            "W1",
            "homo_refine_new",
            outputs={"particles": ("particle", data.particles)},
        ),
        "running": fake.add_job(
            "P1", "W1", "class_2D_new", status="running", outputs=outputs
        ),
    }
    fake.add_file("P1", data.stack_path, data.mrc_bytes())
    return uids


def keep(numbers: Iterable[int]) -> Callable[[ClassAverages], Selection]:
    """A selector that keeps the given class numbers (in place of the model)."""
    wanted = set(numbers)

    def select(classes: ClassAverages) -> Selection:
        kept = np.isin(classes.class_numbers, list(wanted))
        return Selection(
            class_numbers=classes.class_numbers.copy(),
            scores=np.where(kept, 0.9, 0.1),
            selected=kept,
            threshold=0.5,
            threshold_source="user",
            mode="image+metadata",
            model_sha256="0" * 64,
            model_name="test-selector",
            reasons=tuple("" if k else "score" for k in kept),
        )

    return select
