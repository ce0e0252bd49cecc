"""The model as it crosses the network: every exchanged tensor packed into one array.

Flower 1.41 moves each ``Array`` of a message as separate objects, one HTTPS request
each (through nginx, two at a time): the shipped model's 58 tensors make 114 objects per
message and direction. Packed into a single float32 vector they make one array, so a
round costs a handful of requests per site instead of hundreds. The layout (names,
shapes, dtypes, order) is not sent: both sides derive it from the model spec
(:func:`~cryodiscovery.federation.task.named_arrays`), and :func:`unpack` refuses a
vector that does not fit it exactly. Aggregation is unchanged by packing: FedAvg,
FedProx, FedAdam, FedYogi, trimmed mean and median work element-wise, Krum on the whole
update's distances, update screening on its values and norm.

Public API: ``PACKED_KEY``, ``pack(named) -> ArrayRecord``, ``is_packed(arrays)``,
``unpack(packed, layout) -> ArrayRecord``, ``BN_STATISTICS``,
``keep_statistics(packed, source, layout) -> ArrayRecord``,
``statistics_mask(layout) -> np.ndarray``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

#: The one key of a packed ArrayRecord.
PACKED_KEY = "packed-weights"
#: Name endings of BatchNorm's running statistics (set by data, not by gradients).
BN_STATISTICS: tuple[str, ...] = ("running_mean", "running_var", "num_batches_tracked")


def pack(named: ArrayRecord) -> ArrayRecord:
    """One float32 vector: every array of ``named`` flattened, in order."""
    parts = [np.asarray(a.numpy(), dtype=np.float32).ravel() for a in named.values()]
    vector = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return ArrayRecord({PACKED_KEY: Array(vector)})


def is_packed(arrays: ArrayRecord) -> bool:
    """True when ``arrays`` is the packed form (exactly one array, :data:`PACKED_KEY`)."""
    return list(arrays.keys()) == [PACKED_KEY]


def unpack(packed: ArrayRecord, layout: ArrayRecord) -> ArrayRecord:
    """The named arrays of ``layout``'s names, shapes and dtypes, filled from ``packed``.

    Raises
    ------
    ValueError
        ``packed`` is not one float32 vector of exactly the layout's size.
    """
    vector = _vector(packed, layout)
    out, offset = ArrayRecord(), 0
    for name, ref in layout.items():
        n = int(np.prod(ref.shape, dtype=np.int64))
        value = vector[offset : offset + n].reshape(tuple(ref.shape))
        out[name] = Array(value.astype(np.dtype(ref.dtype), copy=True))
        offset += n
    return out


def statistics_mask(layout: ArrayRecord) -> np.ndarray:
    """Boolean mask over the packed vector of ``layout``: True at the BatchNorm running
    statistics (:data:`BN_STATISTICS`)."""
    parts = [
        np.full(int(np.prod(ref.shape, dtype=np.int64)), name.endswith(BN_STATISTICS))
        for name, ref in layout.items()
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def keep_statistics(
    packed: ArrayRecord, source: ArrayRecord, layout: ArrayRecord
) -> ArrayRecord:
    """``packed`` with every BatchNorm running statistic (:data:`BN_STATISTICS`) taken
    from ``source``; both packed with ``layout``.

    Under DP the noise lands on the running statistics too and can make a variance
    negative; keeping the previous global statistics is post-processing (no privacy
    cost) and sends no data-dependent statistics at all.
    """
    vector = _vector(packed, layout).copy()
    mask = statistics_mask(layout)
    vector[mask] = _vector(source, layout)[mask]
    return ArrayRecord({PACKED_KEY: Array(vector)})


def _vector(packed: ArrayRecord, layout: ArrayRecord) -> np.ndarray:
    """The packed vector, checked against ``layout``: ``ValueError`` unless it is one
    float32 vector of exactly the layout's size."""
    if not is_packed(packed):
        raise ValueError(
            f"expected one array '{PACKED_KEY}', got {list(packed.keys())}"
        )
    vector = packed[PACKED_KEY].numpy()
    total = sum(int(np.prod(a.shape, dtype=np.int64)) for a in layout.values())
    if vector.dtype != np.float32 or vector.ndim != 1 or vector.size != total:
        raise ValueError(
            f"'{PACKED_KEY}' is {vector.dtype} {tuple(vector.shape)}, the model needs "
            f"float32 ({total},)"
        )
    return vector
