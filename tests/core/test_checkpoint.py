"""Model files: round trip with identical scores, checksum, and clear errors for bad files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cryodiscovery.core.classes import ClassAverages
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.checkpoint import (
    DEFAULT_MODEL_PATH,
    MAGIC,
    load_scorer,
    save_scorer,
)
from cryodiscovery.core.model.scorer import IMAGE_AND_METADATA, IMAGE_ONLY, ClassScorer
from cryodiscovery.core.outputs import sha256_file
from model_fixtures import make_toy_classes, tiny_scorer


@pytest.mark.parametrize(("rule", "meta"), [("boosted3", True), ("single", False)])
def test_round_trip_gives_identical_scores(
    tmp_path: Path, rule: str, meta: bool
) -> None:
    scorer = tiny_scorer(rule, meta)
    classes = make_toy_classes(20, seed=5, box=80)
    before = scorer.predict(classes)
    path = tmp_path / "m.pt"
    digest = save_scorer(scorer, path)
    assert digest == sha256_file(path) == scorer.sha256
    loaded = load_scorer(path)
    # the same weights; the last float bit may differ between two runs of a
    # multi-threaded CPU convolution (seen once in ~10 full-suite runs)
    np.testing.assert_allclose(loaded.predict(classes), before, rtol=0, atol=1e-6)
    for a, b in zip(loaded.members, scorer.members, strict=True):
        for (k, x), (_, y) in zip(
            a.state_dict().items(), b.state_dict().items(), strict=True
        ):
            assert torch.equal(x, y), k
    assert loaded.sha256 == digest and loaded.name == scorer.name
    assert loaded.rule == rule and loaded.threshold == scorer.threshold
    assert loaded.info == scorer.info
    np.testing.assert_array_equal(loaded.validation_scores, scorer.validation_scores)
    np.testing.assert_array_equal(loaded.validation_groups, scorer.validation_groups)
    assert loaded.image_only_threshold == scorer.image_only_threshold == 0.4
    for mode in (IMAGE_ONLY, IMAGE_AND_METADATA):
        assert loaded.threshold_for_fnr(0.1, mode) == scorer.threshold_for_fnr(
            0.1, mode
        )
    assert scorer.threshold_for_fnr(0.1, IMAGE_ONLY) < scorer.threshold_for_fnr(0.1)
    assert all(hasattr(m, "cam_layer") for m in loaded.members)


def test_prepare_member_logits_and_combine_give_predict(tmp_path: Path) -> None:
    scorer = tiny_scorer()
    classes = make_toy_classes(7, seed=1)
    images, meta = scorer.prepare(classes)
    probs = scorer.combine(scorer.member_logits(images, meta))
    np.testing.assert_allclose(probs.numpy(), scorer.predict(classes), rtol=1e-6)


def test_modes_are_reported() -> None:
    classes = make_toy_classes(4, seed=1)
    bare = ClassAverages.create(classes.images)
    assert tiny_scorer().mode_for(classes) == IMAGE_AND_METADATA
    assert tiny_scorer().mode_for(bare) == IMAGE_ONLY
    assert tiny_scorer(meta=False).mode_for(classes) == IMAGE_ONLY
    assert tiny_scorer().predict(bare).shape == (4,)


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    save_scorer(tiny_scorer(), path)
    return path


def _rewrite_payload(path: Path, change: dict) -> Path:
    """A file with a valid header and checksum around an altered payload."""
    data = path.read_bytes()
    body = data[data.index(b"\n", len(MAGIC)) + 1 :]
    payload = torch.load(io.BytesIO(body), weights_only=True)
    payload.update(change)
    buf = io.BytesIO()
    torch.save(payload, buf)
    new = buf.getvalue()
    header = {
        "format": 1,
        "payload_bytes": len(new),
        "payload_sha256": hashlib.sha256(new).hexdigest(),
    }
    altered = path.with_name("altered.pt")
    altered.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + new)
    return altered


def test_bad_model_files_give_clear_errors(tmp_path: Path) -> None:
    good = _saved(tmp_path)
    data = good.read_bytes()
    cases = {
        "missing.pt": (None, "not found"),
        "random.pt": (b"\x00\x01garbage" * 50, "not a cryodiscovery model"),
        "truncated.pt": (data[: len(data) - 100], "truncated"),
        "header.pt": (MAGIC + b"{not json\n" + data, "header"),
    }
    flipped = bytearray(data)
    flipped[-50] ^= 0xFF
    cases["corrupt.pt"] = (bytes(flipped), "checksum mismatch")
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(InputError, match=message) as err:
            load_scorer(path)
        assert name in str(err.value) and "\n" not in str(err.value)
    plain = tmp_path / "plain_torch.pt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(InputError, match="not a cryodiscovery model"):
        load_scorer(plain)


def test_inconsistent_payload_is_an_input_error(tmp_path: Path) -> None:
    good = _saved(tmp_path)
    wrong_arch = json.dumps({"stem": 4, "widths": [4, 4, 4], "meta_features": 22})
    for change, message in [
        ({"net_config": wrong_arch}, "inconsistent"),
        ({"rule": "vote"}, "inconsistent"),
        ({"members": []}, "inconsistent"),
    ]:
        with pytest.raises(InputError, match=message):
            load_scorer(_rewrite_payload(good, change))


def test_recalibration_needs_stored_validation_scores() -> None:
    scorer = tiny_scorer()
    bare = ClassScorer(
        scorer.members, scorer.net_config, scorer.preprocess, "boosted3", 0.5
    )
    with pytest.raises(InputError, match="--threshold"):
        bare.threshold_for_fnr(0.05)
    with pytest.raises(InputError, match="target-fnr"):
        scorer.threshold_for_fnr(1.5)


def test_shipped_default_model_loads_and_matches_its_card() -> None:
    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped default model (run `make model`)")
    scorer = load_scorer()
    assert 0.0 < scorer.threshold < 1.0 and scorer.validation_scores is not None
    card = DEFAULT_MODEL_PATH.with_suffix(".json")
    if card.is_file():
        assert json.loads(card.read_text())["sha256"] == scorer.sha256
    assert scorer.predict(make_toy_classes(3, seed=0)).shape == (3,)
