"""Where the networks run: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``
or ``"cuda"``. Inputs and results stay on the CPU; only networks and batches move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryodiscovery.core.errors import InputError

if (
    TYPE_CHECKING
):  # torch is imported when a device is resolved, not to list the choices
    import torch

#: The values of ``--device`` (and the RELION/cryoSPARC job parameter).
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name`` (one of :data:`DEVICES`).

    Raises
    ------
    InputError
        ``name`` is unknown, or ``"cuda"`` where torch has no CUDA device.
    """
    import torch

    if name not in DEVICES:
        raise InputError(
            None, f"device must be one of {', '.join(DEVICES)}, got {name!r}"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else "no GPU found"
        raise InputError(
            None,
            f"device cuda asked for, but CUDA is not available here "
            f"(torch {torch.__version__}: {build}); use device cpu or auto",
        )
    return torch.device(name)
