"""One contract for every tool that writes a selection (``cryodiscovery score``, the
RELION External job, the cryoSPARC offline job), run against each alike, as mrcfile runs
one set of tests over every file implementation.

The contract: the outputs, the review page (``review.html``) among them, appear all or
nothing; a failed rerun keeps the previous set; a rerun leaves no stale output of the
previous set; every run leaves a run record; the same options give the same decisions;
the same mistakes get the same refusal (exit 2 and one error line) and touch nothing.
Each tool runs in-process through its ``main`` on a small generated job
(:mod:`cryodiscovery.core.synthetic.export`) with a tiny model.
"""

from __future__ import annotations

import abc
import csv
import errno
import fnmatch
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core.io.stack import read_mrc_images, write_stack
from cryodiscovery.core.report import selection_files
from support.models import save_tiny_model, write_generated_projects

DATA_STAR = "Class2D/job001/run_it025_data.star"
RELION_STACK = "Class2D/job001/run_it025_classes.mrcs"
#: Every class is kept on score (the particle rule still drops empty classes), so the
#: decisions do not hang on the untrained model's scores.
KEEP_ALL = ["--threshold", "0"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("model") / "tiny.pt", "tiny-contract-model"
    )


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One simulated job, written as a RELION project and as cryoSPARC folders."""
    return write_generated_projects(tmp_path_factory.mktemp("generated"), 6, 2)


class SelectionJobContract(abc.ABC):
    """The contract; a subclass says how to run its tool."""

    #: ``command`` in the tool's run_record.json.
    command: str
    #: Which generated project the tool reads (``"relion"`` or ``"cryosparc"``).
    flavour: str

    @abc.abstractmethod
    def run(self, project: Path, out: Path, options: list[str]) -> int:
        """Run the tool on ``project`` writing to ``out``; return its exit status."""

    @abc.abstractmethod
    def output_set(self) -> tuple[str, ...]:
        """The tool's output set, as patterns relative to the output folder."""

    @abc.abstractmethod
    def stack(self, project: Path) -> Path:
        """The class-average stack of the input."""

    # --- shared machinery -------------------------------------------------------------

    @pytest.fixture
    def env(self, generated, tiny_model, tmp_path, monkeypatch, capsys):
        project = tmp_path / "project"
        shutil.copytree(generated[self.flavour], project)
        monkeypatch.chdir(project)  # RELION runs jobs from the project folder
        self.model = tiny_model
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        return project

    def call(self, project: Path, out: Path, *options: str) -> int:
        argv = ["--model", str(self.model), *options]
        try:
            return self.run(project, out, argv)
        except SystemExit as stop:  # an argparse refusal
            return int(stop.code or 0)

    def outputs(self, out: Path) -> dict[str, bytes]:
        """Files of the output set in ``out``, with their bytes."""
        if not out.is_dir():
            return {}
        found = (p for p in out.rglob("*") if p.is_file())
        return {
            p.relative_to(out).as_posix(): p.read_bytes()
            for p in found
            if any(
                fnmatch.fnmatchcase(p.relative_to(out).as_posix(), pattern)
                for pattern in self.output_set()
            )
        }

    def error_lines(self) -> list[str]:
        err = self.capsys.readouterr().err.strip().splitlines()
        return [line for line in err if "error" in line.lower()]

    def fail_while_writing(self) -> None:
        def full_disk(*args: object, **kwargs: object) -> Path:
            raise OSError(
                errno.ENOSPC, "No space left on device", "score_histogram.png"
            )

        self.monkeypatch.setattr(selection_files, "render_score_histogram", full_disk)

    @staticmethod
    def decisions(out: Path) -> list[tuple[str, str, str]]:
        with open(out / "scores.csv", newline="") as fh:
            return [
                (r["class_number"], r["score"], r["selected"])
                for r in csv.DictReader(fh)
            ]

    # --- the contract -----------------------------------------------------------------

    def test_a_run_writes_the_set_and_its_record(self, env):
        out = env / "out"
        assert self.call(env, out, *KEEP_ALL) == 0
        written = self.outputs(out)
        report = {"scores.csv", "gallery.png", "review.html", "run_record.json"}
        assert report <= set(written)
        assert b'data-class="' in written["review.html"]
        record = json.loads(written["run_record.json"])
        assert record["command"] == self.command
        assert len(record["model_sha256"]) == 64 and record["argv"]
        assert not list(out.glob(".staging-*"))

    def test_a_failed_first_run_writes_nothing(self, env):
        out = env / "out"
        self.fail_while_writing()
        assert self.call(env, out, *KEEP_ALL) == 1
        assert self.outputs(out) == {}
        assert len(self.error_lines()) == 1
        assert not list(out.glob(".staging-*"))

    def test_a_failed_rerun_keeps_the_previous_set(self, env):
        out = env / "out"
        assert self.call(env, out, *KEEP_ALL) == 0
        before = self.outputs(out)
        self.fail_while_writing()
        assert self.call(env, out, *KEEP_ALL) == 1
        assert self.outputs(out) == before

    def test_a_rerun_leaves_no_stale_outputs(self, env):
        out = env / "out"
        assert self.call(env, out, *KEEP_ALL) == 0
        (out / "gallery_9.png").write_bytes(b"page 9 of an earlier run")
        (out / "explain").mkdir()
        (out / "explain" / "class_999.png").write_bytes(b"an earlier overlay")
        (out / "notes.txt").write_text("the user's own file")
        assert self.call(env, out, *KEEP_ALL) == 0
        assert not (out / "gallery_9.png").exists()
        assert not (out / "explain").exists()
        assert (out / "notes.txt").read_text() == "the user's own file"

    def test_the_same_options_give_the_same_decisions(self, env):
        first, second = env / "first", env / "second"
        assert self.call(env, first, *KEEP_ALL) == 0
        assert self.call(env, second, *KEEP_ALL) == 0
        assert self.decisions(first) == self.decisions(second)
        assert any(selected == "1" for _, _, selected in self.decisions(first))

    def test_a_bad_threshold_is_refused(self, env):
        out = env / "out"
        assert self.call(env, out, "--threshold", "2") == 2
        assert self.outputs(out) == {}

    def test_an_out_that_is_a_file_is_refused_untouched(self, env):
        out = env / "out"
        out.write_text("not a folder")
        assert self.call(env, out, *KEEP_ALL) == 2
        assert out.read_text() == "not a folder"
        [line] = self.error_lines()
        assert "not a folder" in line

    def test_a_stack_of_another_box_is_refused(self, env):
        stack = self.stack(env)
        images, voxel = read_mrc_images(stack)
        size = images.shape[-1] + 16
        write_stack(stack, np.zeros((len(images), size, size)), voxel)
        out = env / "out"
        assert self.call(env, out, *KEEP_ALL) == 2
        assert self.outputs(out) == {}
        [line] = self.error_lines()
        assert f"{size}" in line and "px" in line


class TestScore(SelectionJobContract):
    command = "score"
    flavour = "relion"

    def run(self, project: Path, out: Path, options: list[str]) -> int:
        from cryodiscovery.core import cli

        return cli.main(
            ["score", str(project / DATA_STAR), "--out", str(out), *options]
        )

    def output_set(self) -> tuple[str, ...]:
        return selection_files.SELECTION_OUTPUTS

    def stack(self, project: Path) -> Path:
        return project / RELION_STACK


class TestRelionExternalJob(SelectionJobContract):
    command = "cryodiscovery-relion"
    flavour = "relion"

    def run(self, project: Path, out: Path, options: list[str]) -> int:
        from cryodiscovery.relion_external.cli import main

        job = os.path.relpath(out, project) + "/"  # as RELION gives it
        return main(["--o", job, "--in_parts", DATA_STAR, *options, "--j", "1"])

    def output_set(self) -> tuple[str, ...]:
        from cryodiscovery.relion_external.selection_job import OUTPUTS

        return OUTPUTS

    def stack(self, project: Path) -> Path:
        return project / RELION_STACK


class TestCryosparcOfflineJob(SelectionJobContract):
    command = "cryodiscovery-cryosparc"
    flavour = "cryosparc"

    def run(self, project: Path, out: Path, options: list[str]) -> int:
        from cryodiscovery.cryosparc_job.cli import main

        return main(["--job-dir", str(project / "J1"), "--out", str(out), *options])

    def output_set(self) -> tuple[str, ...]:
        from cryodiscovery.cryosparc_job.offline import output_set

        return output_set()

    def stack(self, project: Path) -> Path:
        return next((project / "J1").glob("J1_*_class_averages.mrc"))
