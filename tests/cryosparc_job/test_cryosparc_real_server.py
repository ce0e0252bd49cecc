"""Opt-in: the online mode against a real cryoSPARC instance. Skipped unless set up:

    CRYOSPARC_URL=http://host:39000          # cryoSPARC v5 web URL
    CRYOSPARC_TEST_PROJECT=P3 CRYOSPARC_TEST_JOB=J42   # a completed 2D Classification
    CRYOSPARC_EMAIL=... CRYOSPARC_PASSWORD=...         # or a `python -m cryosparc.tools login`
    CRYOSPARC_TEST_WORKSPACE=W1              # optional

It creates one External job titled "cryodiscovery opt-in test" (left in place for
inspection), scores with the shipped model and checks what the server kept.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryodiscovery.cryosparc_job.cli import main
from cryodiscovery.cryosparc_job.session import ServerConfig, connect

URL = os.environ.get("CRYOSPARC_URL")
PROJECT = os.environ.get("CRYOSPARC_TEST_PROJECT")
JOB = os.environ.get("CRYOSPARC_TEST_JOB")

pytestmark = pytest.mark.skipif(
    not (URL and PROJECT and JOB),
    reason="set CRYOSPARC_URL, CRYOSPARC_TEST_PROJECT and CRYOSPARC_TEST_JOB to run against a real cryoSPARC",
)


def test_real_instance_round_trip(tmp_path):
    argv = ["--url", str(URL), "--project", str(PROJECT), "--job", str(JOB)]
    argv += ["--title", "cryodiscovery opt-in test", "--out", str(tmp_path / "report")]
    if os.environ.get("CRYOSPARC_TEST_WORKSPACE"):
        argv += ["--workspace", os.environ["CRYOSPARC_TEST_WORKSPACE"]]
    assert main(argv) == 0
    cs = connect(
        ServerConfig(
            url=URL,
            email=os.environ.get("CRYOSPARC_EMAIL"),
            password=os.environ.get("CRYOSPARC_PASSWORD"),
        )
    )
    source = cs.find_job(PROJECT, JOB)
    particles = source.load_output("particles", slots=["alignments2D"])
    made = [
        j
        for j in cs.find_jobs(PROJECT, type="snowflake")
        if j.title == "cryodiscovery opt-in test"
    ]
    ext = max(made, key=lambda j: j.model.created_at)
    assert ext.status == "completed"
    uids = []
    for name in ("particles_selected", "particles_excluded"):
        if ext.outputs.get(name) is not None and ext.outputs[name].num_items:
            dset = ext.load_output(name)
            assert {"blob", "alignments2D", "ctf"} <= set(
                dset.prefixes()
            )  # passthrough joined
            uids.append(np.asarray(dset["uid"]))
    got = np.concatenate(uids)
    assert np.unique(got).size == got.size == len(particles)
    assert set(got.tolist()) == set(np.asarray(particles["uid"]).tolist())
