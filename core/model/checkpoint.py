"""Self-describing, checksummed model files, which load into a
:class:`~cryodiscovery.core.model.scorer.ClassScorer`, and the model card.

A model file is a short text header followed by a ``torch.save`` payload::

    CRYODISCOVERY-MODEL\\n
    {"format": 1, "payload_bytes": N, "payload_sha256": "..."}\\n
    <N bytes: torch.save of a dict of plain values and tensors>

The payload holds the architecture, the preprocessing, every member's state dict, the
ensemble rule and the decision that chose it, the stored threshold and the target
false-negative rate it was calibrated for, the validation labels and scores (so any other
target can be recalibrated), test metrics and a description of the training data. Loading
checks the header, the length and the SHA-256 of the payload, then reads it with
``torch.load(weights_only=True)`` (no code is executed from a model file).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from cryodiscovery.core.errors import InputError
from cryodiscovery.core.model.scorer import ClassScorer, json_default
from cryodiscovery.core.outputs import atomic_path

log = logging.getLogger(__name__)

MAGIC = b"CRYODISCOVERY-MODEL\n"
FORMAT_VERSION = 1
#: The shipped default model.
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "weights" / "default.pt"


def save_scorer(scorer: ClassScorer, path: str | Path) -> str:
    """Write ``scorer`` to ``path`` atomically; returns (and sets) the file's SHA-256."""
    buf = io.BytesIO()
    torch.save(scorer.payload(), buf)
    body = buf.getvalue()
    header = {
        "format": FORMAT_VERSION,
        "payload_bytes": len(body),
        "payload_sha256": hashlib.sha256(body).hexdigest(),
    }
    data = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        tmp.chmod(0o644)  # a package data file must be readable by every user
    scorer.sha256 = hashlib.sha256(data).hexdigest()
    return scorer.sha256


def read_payload(path: str | Path) -> tuple[dict[str, Any], str]:
    """Check and read a model file: ``(payload, file SHA-256)``; ``InputError`` if bad."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "model file not found")
    data = p.read_bytes()
    if not data.startswith(MAGIC):
        raise InputError(
            p, "not a cryodiscovery model file (no CRYODISCOVERY-MODEL header)"
        )
    end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : end])
        version, size, digest = (
            int(header["format"]),
            int(header["payload_bytes"]),
            str(header["payload_sha256"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(p, f"unreadable model file header ({err})") from None
    if version != FORMAT_VERSION:
        raise InputError(
            p, f"model format {version} is not supported (expected {FORMAT_VERSION})"
        )
    body = data[end + 1 :]
    if len(body) != size:
        raise InputError(
            p,
            f"truncated or padded model file: payload is {len(body)} bytes, header says {size}",
        )
    if hashlib.sha256(body).hexdigest() != digest:
        raise InputError(p, "checksum mismatch: the model file is corrupt")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad archive
        raise InputError(
            p, f"cannot read the model payload ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict):
        raise InputError(p, "model payload is not a dictionary")
    return payload, hashlib.sha256(data).hexdigest()


def load_scorer(path: str | Path | None = None) -> ClassScorer:
    """Load a model file (``None``: the shipped default model), verifying its checksum.

    Raises
    ------
    InputError
        Missing, truncated, corrupt, foreign or inconsistent model files.
    """
    p = DEFAULT_MODEL_PATH if path is None else Path(path)
    if path is None and not p.is_file():
        raise InputError(p, "the default model is missing; build it with `make model`")
    payload, digest = read_payload(p)
    try:
        scorer = ClassScorer.from_payload(payload, digest)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
        what = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(p, f"model file is inconsistent: {what}") from None
    log.debug("loaded model %s (%s, sha256 %s)", scorer.name, scorer.rule, digest[:12])
    return scorer


def model_card(scorer: ClassScorer) -> dict[str, Any]:
    """A JSON-ready description of a saved scorer: what it is, how it was trained and
    how well it did (the model card shipped beside the default weights)."""
    n_params = sum(p.numel() for p in scorer.members[0].parameters())
    return {
        "name": scorer.name,
        "sha256": scorer.sha256,
        "architecture": {
            "network": "residual CNN + metadata MLP (cryodiscovery.core.model.nets.ClassNet)",
            "config": scorer.net_config.to_dict(),
            "parameters_per_member": n_params,
            "members": len(scorer.members),
            "rule": scorer.rule,
        },
        "preprocessing": scorer.preprocess.to_dict(),
        "threshold": scorer.threshold,
        "image_only_threshold": scorer.image_only_threshold,
        "target_fnr": scorer.target_fnr,
        "image_only_target_fnr": (
            scorer.target_fnr
            if scorer.image_only_target_fnr is None
            else scorer.image_only_target_fnr
        ),
        **scorer.info,
    }


def write_model_card(scorer: ClassScorer, path: str | Path) -> Path:
    """Write :func:`model_card` as JSON to ``path`` (atomically)."""
    target = Path(path)
    text = json.dumps(model_card(scorer), indent=2, default=json_default) + "\n"
    with atomic_path(target) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o644)
    return target
