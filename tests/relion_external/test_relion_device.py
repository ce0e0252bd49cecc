"""The job parameter ``device``: ``auto`` by default, ``cuda`` without CUDA refused with
the failure marker and one line."""

from __future__ import annotations

import argparse

import pytest
import torch


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_relion_job_refuses_cuda_without_cuda(
    no_cuda: None, tmp_path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from cryodiscovery.relion_external.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["--o", "External/job010/", "--in_parts", "run_it025_data.star"]
    assert main([*argv, "--device", "cuda", "--j", "1"]) != 0  # bad input
    out = tmp_path / "External/job010"
    assert sorted(p.name for p in out.iterdir()) == ["RELION_JOB_EXIT_FAILURE"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]


def test_relion_job_device_param(tmp_path) -> None:
    from cryodiscovery.relion_external.config import add_args, config_from_args

    parser = argparse.ArgumentParser()
    add_args(parser)
    base = ["--o", str(tmp_path), "--in_parts", "x_data.star"]
    for given, want in (
        (["--device", "cpu"], "cpu"),
        (["--device"], "auto"),
        ([], "auto"),
    ):
        ns = parser.parse_args([*base, *given])
        assert config_from_args(ns, []).selection.device == want
