"""``--device``: ``cuda`` without CUDA refused with one line, exit status 2, before any
server is asked."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cryosparc_job_refuses_cuda_without_cuda(
    no_cuda: None, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryodiscovery.cryosparc_job.cli import main

    argv = ["--job-dir", str(tmp_path / "J1"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
