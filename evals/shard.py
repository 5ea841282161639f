"""Many GPUs: which device an xdist worker takes, how a case is split into shards, and the
controller's merge of the shards back into one case.

``pytest evals -n 8 --device cuda``: worker ``gwN`` loads the engine once, on ``cuda:(N mod G)``
where G is the number of GPUs it sees (``CUDA_VISIBLE_DEVICES`` is honoured). With
``--tx 4*ssh=host1 --tx 4*ssh=host2`` the workers are numbered host by host, so each host's four
workers take its four GPUs.

Under xdist every benchmark test is parametrized over a shard index (``--shards``, default the
number of workers): shard i of k evaluates the i-th contiguous block of each case's documents
(see :func:`block`), so a large case keeps all workers busy. Each shard ships its rows; the
controller concatenates them in shard order, which is document order, and judges the merged case
(:func:`evals.plugin.result.merge_shards`), so the report equals a single-process run's.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

_SHARD_ID = re.compile(r"shard\d+of\d+")


def worker_index(worker: str | None) -> int | None:
    """``"gw3"`` (``PYTEST_XDIST_WORKER``) -> 3; None outside xdist."""
    if not worker:
        return None
    match = re.fullmatch(r"gw(\d+)", worker)
    if not match:
        raise ValueError(f"PYTEST_XDIST_WORKER: expected gw<N>, found {worker!r}")
    return int(match.group(1))


def worker_device(device: str, worker: int | None, gpu_count: int) -> str:
    """The device a worker loads the engine on: ``--device cuda`` spreads workers over the GPUs;
    ``cpu`` and an explicit ``cuda:N`` are kept as given."""
    if worker is None or device != "cuda":
        return device
    if gpu_count < 1:
        raise ValueError(f"--device cuda under xdist: worker gw{worker} sees no CUDA device")
    return f"cuda:{worker % gpu_count}"


def shard_count(option: int | None, workers: int | None) -> int:
    """``--shards`` if given, else the number of xdist workers (1, no sharding, outside xdist)."""
    if option is not None:
        return option
    return workers if workers and workers > 1 else 1


def shard_id(index: int, count: int) -> str:
    return f"shard{index}of{count}"


def block(indices: Sequence[int], index: int, count: int) -> list[int]:
    """The ``index``-th of ``count`` contiguous, near-equal blocks of ``indices`` (may be empty)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    n = len(indices)
    return list(indices[n * index // count: n * (index + 1) // count])


def case_nodeid(nodeid: str) -> str:
    """The node id of a case without its shard parameter (the serial run's id)."""
    nodeid = re.sub(r"\[shard\d+of\d+\]$", "", nodeid)
    nodeid = re.sub(r"shard\d+of\d+-", "", nodeid)
    return re.sub(r"-shard\d+of\d+\]", "]", nodeid)
