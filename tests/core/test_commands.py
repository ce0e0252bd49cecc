"""`cryodiscovery score`, `evaluate` and `demo`, run in-process through the umbrella
command on tiny generated jobs with a tiny (untrained, deterministic) model."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from cryodiscovery.core import cli
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.io.stack import write_stack
from cryodiscovery.core.synthetic.cryosparc_jobs import write_cryosparc_class2d
from cryodiscovery.core.synthetic.generator import (
    SimulationConfig,
    simulate_class_averages,
)
from cryodiscovery.core.synthetic.relion_jobs import write_relion_class2d
from support.models import save_tiny_model


def test_umbrella_lists_every_command():
    assert {"score", "evaluate", "demo", "simulate", "train"} <= set(cli.CORE_COMMANDS)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``run([...]) -> (exit code, stdout, stderr)`` through ``cli.main``."""

    def _run(argv: list[str]) -> tuple[int, str, str]:
        code = cli.main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return _run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(
        tmp_path_factory.mktemp("model") / "tiny.pt", "tiny-test-model"
    )


@pytest.fixture(scope="module")
def simulated() -> ClassAverages:
    return simulate_class_averages(SimulationConfig(n_classes=12, box_sizes=(64,)), 3)


@pytest.fixture(scope="module")
def relion_job(
    simulated: ClassAverages, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    job = write_relion_class2d(simulated, tmp_path_factory.mktemp("project"))
    return job.data_star


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_score_relion_job(run, relion_job: Path, model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["score", str(relion_job), "--out", str(out), "--model", str(model)]
    )
    assert code == 0
    rows = _rows(out / "scores.csv")
    assert [int(r["class_number"]) for r in rows] == list(range(1, 13))
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert all(r["particle_count"] for r in rows)
    kept = sum(r["selected"] == "1" for r in rows)
    assert f"{kept} of 12 classes kept" in stdout
    assert "image+metadata" in stdout and "0.500 (stored with the model)" in stdout
    assert str(out / "gallery.png") in stdout
    for name in ("gallery.png", "score_histogram.png", "run_record.json"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "run_record.json").read_text())
    assert record["command"] == "score" and len(record["model_sha256"]) == 64


def test_threshold_options_decide(
    run, relion_job: Path, model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    base = ["score", str(relion_job), "--model", str(model)]
    assert run([*base, "--out", str(tmp_path / "a"), "--threshold", "0"])[0] == 0
    assert all(r["selected"] == "1" for r in _rows(tmp_path / "a" / "scores.csv"))
    code, _, stderr = run(
        [
            *base,
            "--out",
            str(tmp_path / "b"),
            "--threshold",
            "0",
            "--min-particles",
            "100000",
        ]
    )  # nothing kept: one line naming the best score, no outputs
    assert code == 2 and not (tmp_path / "b").exists()
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("cryodiscovery score: error: no class kept: best score ")
    )
    assert "12 class(es) at or above it have too few particles" in stderr
    code, _, stderr = run(
        [
            *base,
            "--out",
            str(tmp_path / "c"),
            "--threshold",
            "0.3",
            "--target-fnr",
            "0.1",
        ]
    )
    assert code == 2 and stderr.strip().endswith("give one of them")


def test_score_bare_stack_is_image_only_in_stack_order(
    run,
    simulated: ClassAverages,
    model: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    stack = tmp_path / "classes.mrcs"
    write_stack(stack, simulated.images[:5], 2.0)
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["score", str(stack), "--out", str(out), "--model", str(model), "--explain"]
    )
    assert code == 0
    assert "image-only" in stdout
    rows = _rows(out / "scores.csv")
    assert [int(r["class_number"]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["particle_count"] == "" for r in rows)
    assert sorted(p.name for p in (out / "explain").iterdir()) == [
        *(f"class_{i:03d}.png" for i in range(1, 6)),
        "overview.png",
    ]


@pytest.mark.parametrize(
    ("make_input", "extra", "names"),
    [
        (lambda d: d / "missing_data.star", [], "missing_data.star"),
        (lambda d: _garbage(d / "junk.mrcs"), [], "junk.mrcs"),
        (lambda d: _garbage(d / "notes.txt"), [], "notes.txt"),
        (lambda d: None, ["--model", "MODEL"], "bad_model.pt"),
        (lambda d: None, ["--threshold", "1.5"], "threshold must be in [0, 1]"),
    ],
)
def test_bad_input_gives_exit_2_and_one_line(  # type: ignore[no-untyped-def]
    run, relion_job: Path, tmp_path: Path, make_input, extra: list[str], names: str
) -> None:
    source = make_input(tmp_path) or relion_job
    if "MODEL" in extra:
        extra = ["--model", str(_garbage(tmp_path / "bad_model.pt"))]
    out = tmp_path / "out"
    code, _, stderr = run(["score", str(source), "--out", str(out), *extra])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cryodiscovery score: error:")
    assert names in lines[0]
    assert not (out / "scores.csv").exists()


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not what it claims to be\n" * 10)
    return path


def test_demo_then_evaluate_its_project(run, model: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    demo = tmp_path / "demo"
    code, stdout, _ = run(
        [
            "demo",
            "--out",
            str(demo),
            "--classes",
            "10",
            "--seed",
            "2",
            "--model",
            str(model),
        ]
    )
    assert code == 0
    assert "vs truth" in stdout and "false-negative rate" in stdout
    assert str(demo / "score" / "gallery.png") in stdout
    rows = _rows(demo / "score" / "scores.csv")
    assert len(rows) == 10 and all(r["kind"] for r in rows)
    # the counts it prints are the classes scores.csv shows on the wrong side, in the
    # singular for one
    good = [r["kind"].startswith("good") for r in rows]
    lost = sum(g and r["selected"] == "0" for g, r in zip(good, rows, strict=True))
    junk = sum(not g and r["selected"] == "1" for g, r in zip(good, rows, strict=True))
    said = re.search(
        r"\((\d+) good (class|classes) rejected, (\d+) junk (class|classes) kept\)",
        stdout,
    )
    assert said is not None, stdout
    assert (int(said[1]), int(said[3])) == (lost, junk)
    assert said[2] == ("class" if lost == 1 else "classes")
    assert said[4] == ("class" if junk == 1 else "classes")

    out = tmp_path / "eval"
    code, stdout, _ = run(
        [
            "evaluate",
            "--data",
            str(demo / "relion_project"),
            "--model",
            str(model),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "10 labelled classes" in stdout and "ROC AUC" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    (tn, fp), (fn, tp) = overall["confusion"]
    assert tn + fp + fn + tp == 10
    truth = [int(r["selected"]) for r in _rows(out / "scores.csv")]  # decisions
    assert sum(truth) == tp + fp
    for name in ("roc.png", "score_distribution.png", "run_record.json"):
        assert (out / name).stat().st_size > 0

    # the README's review steps on the demo's own folder: flip one class and apply
    table = _rows(demo / "score" / "scores.csv")
    flip = int(table[0]["class_number"])
    selection = tmp_path / "selection.csv"
    lines = ["class_number,selected,score,source"]
    for r in table:
        n, kept = int(r["class_number"]), r["selected"] == "1"
        kept = not kept if n == flip else kept
        who = "person" if n == flip else "model"
        lines.append(f"{n},{int(kept)},{r['score']},{who}")
    selection.write_text("\n".join(lines) + "\n")
    code, _, err = run(
        ["apply-selection", str(demo / "score"), "--selection", str(selection)]
    )
    assert code == 0, err
    after = {
        int(r["class_number"]): r["selected"]
        for r in _rows(demo / "score" / "scores.csv")
    }
    before = {int(r["class_number"]): r["selected"] for r in table}
    assert [n for n in after if after[n] != before[n]] == [flip]
    record = json.loads((demo / "score" / "run_record.json").read_text())
    assert record["config"]["selection_source"] == "person"
    # still the demo's folder: a flip on simulated data is no label beside the truth
    assert record["command"] == "demo"
    from cryodiscovery.core.io.history import find_labelled_sets

    (truth,) = find_labelled_sets(demo)  # the true selection (Select/job002) only
    kinds = {int(r["class_number"]): r["kind"] for r in table}
    assert truth.labels.tolist() == [
        int(kinds[int(c)].startswith("good")) for c in truth.class_numbers
    ]


def test_evaluate_without_labels_names_the_folder(
    run, model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    code, _, stderr = run(["evaluate", "--data", str(empty), "--model", str(model)])
    assert code == 2
    assert "nothing_here" in stderr and "no labelled" in stderr


def test_evaluate_metrics_match_the_decisions(
    run,
    simulated: ClassAverages,
    model: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from cryodiscovery.core.synthetic.relion_pipeline import write_relion_selection

    job = write_relion_class2d(simulated, tmp_path / "project")
    write_relion_selection(job, simulated.labels, "Select/job002")
    out = tmp_path / "eval"
    code, _, _ = run(
        [
            "evaluate",
            "--data",
            str(tmp_path / "project"),
            "--model",
            str(model),
            "--threshold",
            "0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    overall = json.loads((out / "metrics.json").read_text())["overall"]
    good = int(np.sum(simulated.labels == 1))
    # Threshold 0 keeps everything: recall 1, FNR 0, precision = share of good classes.
    assert overall["recall"] == 1.0 and overall["fnr"] == 0.0
    assert overall["precision"] == pytest.approx(good / 12)


def test_score_cryosparc_job_folder(  # type: ignore[no-untyped-def]
    run, simulated: ClassAverages, model: Path, tmp_path: Path
) -> None:
    job = write_cryosparc_class2d(simulated, tmp_path / "P1" / "J7")
    out = tmp_path / "out"
    code, stdout, _ = run(
        ["score", str(job.job_dir), "--out", str(out), "--model", str(model)]
    )
    assert code == 0 and "cryosparc" in stdout
    rows = _rows(out / "scores.csv")
    assert [int(r["class_number"]) for r in rows] == list(range(1, 13))
    counts = simulated.field("particle_count")
    assert [int(r["particle_count"]) for r in rows] == [int(c) for c in counts]


def test_unusable_out_is_one_line_exit_2(run, relion_job: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for out, text in ((afile, "not a folder"), (afile / "out", "is a file")):
        code, _, stderr = run(["score", str(relion_job), "--out", str(out)])
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, stderr
        assert lines[0].startswith("cryodiscovery score: error:") and text in lines[0]
    assert afile.read_text() == "mine\n"


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into a 0o555 folder (the test above checks "
    "a path under a file instead)",
)
def test_read_only_out_is_one_line_exit_2(
    run, relion_job: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, stderr = run(["score", str(relion_job), "--out", str(folder)])
    finally:
        folder.chmod(0o755)
    assert code == 2 and "cannot write here" in stderr.strip().splitlines()[-1]


def test_demo_prints_a_command_that_runs_without_activating_the_venv(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import sys

    from cryodiscovery.core.commands.demo import command_path

    exe = Path(sys.executable).with_name("cryodiscovery")
    if not exe.is_file():
        pytest.skip("the cryodiscovery entry point is not installed beside python")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a shell without the venv activated
    printed = command_path()
    assert printed != "cryodiscovery" and Path(printed).resolve() == exe.resolve()
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}/usr/bin")  # activated
    assert command_path() == "cryodiscovery"


def test_sigterm_mid_write_exits_130_and_leaves_no_partial_outputs(
    simulated: ClassAverages, model: Path, tmp_path: Path
) -> None:
    """SIGTERM (``kill``, a queue's time limit) while the outputs are being staged: exit
    130 like Ctrl-C, no staging folder, no outputs (a real process, a real signal)."""
    import subprocess
    import sys

    stack = tmp_path / "classes.mrcs"
    write_stack(stack, simulated.images[:5], 2.0)
    out = tmp_path / "out"
    script = (
        "import os, signal, sys, time\n"
        "from cryodiscovery.core import cli\n"
        "from cryodiscovery.core.report import selection_files as sf\n"
        "def killed(folder, *a, **k):\n"
        "    (folder / 'scores.csv').write_text('half')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "sf.write_selection_files = killed\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "score",
            str(stack),
            "--out",
            str(out),
            "--model",
            str(model),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    assert "interrupted" in done.stderr.splitlines()[-1]
    assert not out.exists() or not any(out.iterdir())


def test_sigterm_handler_is_restored() -> None:
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), cli.sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before


def test_score_refuses_another_programs_job_folder_and_touches_nothing(
    run, relion_job: Path, model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    class2d = relion_job.parent  # the generated project's Class2D/job001
    (class2d / "job.star").write_text("\n# version 50001\n\ndata_job\n\n")
    before = sorted(p.name for p in class2d.iterdir())
    code, _, err = run(
        ["score", str(relion_job), "--out", str(class2d), "--model", str(model)]
    )
    assert code == 2
    assert "a RELION job's folder (it holds " in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in class2d.iterdir()) == before
    # its own earlier output folder is fine, also with a RELION-looking file in it
    out = tmp_path / "mine"
    assert (
        run(["score", str(relion_job), "--out", str(out), "--model", str(model)])[0]
        == 0
    )
    (out / "note.txt").write_text("my notes\n")
    assert (
        run(["score", str(relion_job), "--out", str(out), "--model", str(model)])[0]
        == 0
    )
    # a user's folder with their own note.txt and job.json is not a job's folder
    own = tmp_path / "results"
    own.mkdir()
    (own / "note.txt").write_text("to do: check class 7\n")
    (own / "job.json").write_text('{"mine": true}')
    scored = ["score", str(relion_job), "--out", str(own), "--model", str(model)]
    assert run(scored)[0] == 0


def test_score_and_demo_refuse_folders_they_must_not_write(
    run, relion_job: Path, model: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    write_stack(stacks / "classes.mrcs", np.zeros((3, 32, 32), np.float32) + 1.0, 2.0)
    argv = ["score", str(stacks / "classes.mrcs"), "--out", str(stacks)]
    code, _, err = run([*argv, "--model", str(model)])
    assert code == 2 and "input's own folder" in err
    assert [p.name for p in stacks.iterdir()] == ["classes.mrcs"]
    project = relion_job.parent.parent.parent
    (project / "default_pipeline.star").write_text("data_pipeline_general\n")
    listing = sorted(p.name for p in project.iterdir())
    code, _, err = run(
        ["demo", "--out", str(project), "--classes", "4", "--model", str(model)]
    )
    (project / "default_pipeline.star").unlink()  # the project is the module's
    assert code == 2 and "a RELION project's folder" in err
    assert sorted(p.name for p in project.iterdir()) == [
        n for n in listing if n != "default_pipeline.star"
    ]
