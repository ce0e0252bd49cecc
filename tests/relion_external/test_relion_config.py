"""RELION's argument shapes, and the shipped job.star run the way RELION runs it."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import starfile
from cryodiscovery.core.errors import InputError
from cryodiscovery.relion_external.cli import build_parser
from cryodiscovery.relion_external.config import ExternalJobConfig, config_from_args
from cryodiscovery.relion_external.job_star import job_star_text, write_job_star

BASE = ["--o", "External/job010/", "--in_parts", "Class2D/job001/run_it025_data.star"]


def parse(args: list[str]) -> ExternalJobConfig:
    ns, unknown = build_parser().parse_known_args(args)
    return config_from_args(ns, unknown)


def relion_command(job_star: Path, outputname: str) -> list[str]:
    """The argv RELION 4/5 builds from an External job.star (getCommandsExternalJob in
    src/pipeline_jobs.cpp), split by the shell it runs through."""
    values = starfile.read(job_star, always_dict=True)["joboptions_values"]
    opts = {
        k: ("" if str(v) == "nan" else str(v))
        for k, v in zip(
            values["rlnJobOptionVariable"], values["rlnJobOptionValue"], strict=True
        )
    }
    command = f"{opts['fn_exe']} --o {outputname}"
    for key, flag in [("in_mov", "in_movies"), ("in_mic", "in_mics"), ("in_part", "in_parts"),
                      ("in_coords", "in_coords"), ("in_3dref", "in_3dref"), ("in_mask", "in_mask")]:  # fmt: skip
        if opts.get(key):
            command += f" --{flag} {opts[key]}"
    for i in range(1, 11):
        if opts.get(f"param{i}_label"):
            command += f" --{opts[f'param{i}_label']} {opts.get(f'param{i}_value', '')}"
    command += f" --j {opts['nr_threads']} {opts.get('other_args', '')}"
    return shlex.split(command)


def test_defaults():
    config = parse(BASE)
    assert config.out_dir == config.control_dir == Path("External/job010")
    assert config.in_parts == Path("Class2D/job001/run_it025_data.star")
    sel = config.selection
    assert (config.threads, sel.threshold, sel.target_fnr, sel.model_path) == (
        1,
        None,
        None,
        None,
    )
    assert (sel.min_particles, sel.adaptive) == (0, True)
    assert (config.explain, config.relion_version) == (False, None)


def test_shipped_job_star_runs_cleanly(tmp_path):
    text = job_star_text()
    job_star = tmp_path / "job.star"
    job_star.write_text(
        text.replace('in_part         ""', "in_part Class2D/job001/run_it025_data.star")
    )
    header = starfile.read(job_star, always_dict=True)["job"]
    assert header["rlnJobTypeLabel"] == "relion.external"
    argv = relion_command(job_star, "External/job010/")
    assert argv[0] == "cryodiscovery-relion"
    ns, unknown = build_parser().parse_known_args(argv[1:])
    assert unknown == []
    config = config_from_args(ns, unknown)
    assert config.in_parts == Path("Class2D/job001/run_it025_data.star")
    sel = config.selection
    assert (sel.threshold, sel.min_particles, config.explain, sel.model_path) == (
        None, 0, False, None)  # fmt: skip
    assert sel.adaptive


def test_written_job_star_names_the_executable(tmp_path):
    path = write_job_star(
        tmp_path / "Schemes/auto/select", "/opt/venv/bin/cryodiscovery-relion"
    )
    values = starfile.read(path, always_dict=True)["joboptions_values"]
    options = dict(
        zip(values["rlnJobOptionVariable"], values["rlnJobOptionValue"], strict=True)
    )
    assert options["fn_exe"] == "/opt/venv/bin/cryodiscovery-relion"
    assert path.read_text().count("\n") == job_star_text().count("\n")
    with pytest.raises(ValueError, match="spaces"):
        job_star_text("/my programs/cryodiscovery-relion")


@pytest.mark.parametrize(
    ("extra", "field", "value"),
    [
        (["--explain", "--j", "4"], "explain", True),  # an empty GUI value vanishes
        (["--explain", "Yes"], "explain", True),
        (["--explain", "No"], "explain", False),
        (["--j", "4"], "threads", 4),
        (["--threshold", "--j", "2"], "threshold", None),
        (["--threshold", "auto"], "threshold", None),
        (["--threshold", "0.3"], "threshold", 0.3),
        (["--min_score", "0.45"], "threshold", 0.45),
        (["--target_fnr", "0.05"], "target_fnr", 0.05),
        (["--model", "default"], "model_path", None),
        (["--model", "my.pt"], "model_path", Path("my.pt")),
        (["--adaptive", "No"], "adaptive", False),
        (["--adaptive", "--j", "2"], "adaptive", True),
        (["--min_particles", "200"], "min_particles", 200),
        (["--relion_version", "4.0"], "relion_version", "4.0"),
        (["--relion_version", "auto"], "relion_version", None),
        (
            ["--pipeline_control", "External/job011/"],
            "control_dir",
            Path("External/job011"),
        ),
    ],
)
def test_relion_shaped_values(extra, field, value):
    config = parse(BASE + extra)
    where = config.selection if hasattr(config.selection, field) else config
    assert getattr(where, field) == value


def test_unknown_options_are_kept_not_fatal():
    config = parse(
        [*BASE, "--in_mics", "CtfFind/job003/micrographs_ctf.star", "--future"]
    )
    assert config.ignored == (
        "--in_mics",
        "CtfFind/job003/micrographs_ctf.star",
        "--future",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--o", "External/job010/"], "--in_parts is missing"),
        (["--in_parts", "x.star"], "--o is missing"),
        ([*BASE, "--threshold", "1.5"], r"threshold must be in \[0, 1\], got 1.5"),
        ([*BASE, "--threshold", "high"], "expected a number"),
        ([*BASE, "--threshold", "0.4", "--min_score", "0.5"], "not both"),
        ([*BASE, "--threshold", "0.4", "--target_fnr", "0.1"], "give one of them"),
        ([*BASE, "--target_fnr", "1"], r"\[0, 1\), got 1.0"),
        ([*BASE, "--target_fnr", "-0.1"], "target false-negative rate"),
        ([*BASE, "--min_particles", "-3"], "must be >= 0"),
        ([*BASE, "--min_particles", "2.5"], "whole number"),
        ([*BASE, "--j", "0"], "--j"),
        ([*BASE, "--explain", "maybe"], "Yes or No"),
        ([*BASE, "--relion_version", "2.1"], "--relion_version"),
    ],
)
def test_bad_values_are_one_line_input_errors(args, message):
    with pytest.raises(InputError, match=message) as info:
        parse(args)
    assert "\n" not in str(info.value)
