"""Shared helpers for the federation tests: tiny models, generated non-IID sites, and a
run of the real ServerApp and ClientApps through the in-process Grid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from cryodiscovery.core.model.checkpoint import save_scorer
from cryodiscovery.core.model.nets import ClassNet, NetConfig
from cryodiscovery.core.model.preprocess import PreprocessConfig
from cryodiscovery.core.model.scorer import ClassScorer
from cryodiscovery.federation import client_app, server_app
from cryodiscovery.federation.client_app import NODE_CONFIG_KEY
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict, UserConfig
from flwr.supercore.task_identity import TaskIdentity
from support.loopback import Handler, LoopbackGrid, run_server_app
from support.sites import NON_IID_SITES, write_site

TINY = NetConfig(in_size=32, stem=4, widths=(8, 16), meta_hidden=8)


def tiny_scorer(members: int = 1, seed: int = 0, name: str = "tiny") -> ClassScorer:
    """An untrained ~7k-parameter scorer (``single`` or ``boosted3``)."""
    torch.manual_seed(seed)
    nets = [ClassNet(TINY) for _ in range(members)]
    rule = "single" if members == 1 else "boosted3"
    # Whole-box framing: these tests are about the federation, and a 7k-parameter net
    # trained for a few epochs on 30 classes learns the whole-box view more reliably.
    pre = PreprocessConfig(size=32, framing="box")
    return ClassScorer(nets, TINY, pre, rule, 0.5, name=name)


def make_sites(
    root: Path,
    n: int,
    n_classes: int = 40,
    extra: dict[int, dict[str, Any]] | None = None,
) -> dict[int, Path]:
    """``n`` generated non-IID sites under ``root``: node id -> federation.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    ca, key = root / "ca.crt", root / "node_key"
    ca.write_text("test CA placeholder\n")
    key.write_text("test key placeholder\n")
    paths = {}
    for i in range(n):
        spec = replace(
            NON_IID_SITES[i % len(NON_IID_SITES)],
            n_classes=n_classes,
            box_sizes=(64,),
            particle_range=(20, 200),
        )
        paths[i + 1] = write_site(
            root / spec.name,
            spec,
            seed=100 + i,
            ca_certificate=ca,
            node_private_key=key,
            extra=(extra or {}).get(i + 1),
        )
    return paths


def run_apps(
    sites: dict[int, Path],
    run_config: UserConfig,
    *,
    keep_bytes: bool = False,
    workers: int = 1,
    handler: Handler = client_app.app,
) -> LoopbackGrid:
    """Run the real ServerApp with the real ClientApp (or ``handler``, e.g. the
    deployment's ``site_app.app``) at every site, in this process."""
    grid = LoopbackGrid(
        {node: handler for node in sites},
        {node: {NODE_CONFIG_KEY: str(path)} for node, path in sites.items()},
        keep_bytes=keep_bytes,
        workers=workers,
    )
    try:
        run_server_app(server_app.app, grid, run_config)
    finally:
        grid.close()
    return grid


def run_config(
    root: Path, registry: str = "registry", **more: object
) -> dict[str, object]:
    """The run config of the in-process federation tests (2 rounds, 3 sites)."""
    config: dict[str, object] = {
        "num-rounds": 2,
        "min-sites": 3,
        "registry": str(root / registry),
        "initial-model": str(root / "initial.pt"),
        "validation-seeds": "7,8",
        "validation-classes": 40,
        "local-epochs": 3,
        "learning-rate": 0.01,
        "round-timeout": 300,
        "wait-for-sites": 5,
    }
    config.update(more)
    return config


def save_initial(path: Path, members: int = 1) -> Path:
    """Save a tiny untrained model as the federation's initial model."""
    save_scorer(tiny_scorer(members), path)
    return path


def train_message(arrays: ArrayRecord, config: dict[str, Any] | None = None) -> Message:
    """A server's train message for node 1 of run 1, as a ClientApp receives it."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, 1, 0
    try:
        return Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord(config or {})}),
            dst_node_id=1,
            message_type="train",
        )
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
