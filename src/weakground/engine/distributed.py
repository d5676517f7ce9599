"""Distributed data-parallel training with PyTorch's own engine: ``torchrun --nproc_per_node N -m weakground train``.

Everything that knows about processes lives here; the trainer and the driver ask only "is this rank 0?", "shard
this batch", "wrap this model", "wait for the others". Outside torchrun (``WORLD_SIZE`` unset or 1) every function
is a no-op that answers as a single process would, so one code path serves both.

The data scheme is the simplest exact one: every rank builds the same global batch from the same seeded
generator and keeps its own contiguous slice of the rows. The global batch is then the single-process batch, and
a per-sample-mean loss (rescaled by each slice's share of the rows, see :func:`shard`) gives, after DDP's gradient
average, exactly the single-process gradient. The price is that each rank also assembles the rows it drops; the
batches here come from arrays already in memory (or precomputed region features), so that is cheap next to the
model's step. What stays per rank: BatchNorm statistics on CPU (SyncBatchNorm needs CUDA) and losses whose
negatives are the other rows of the batch (see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator

import torch
from torch import distributed as dist
from torch import nn

from weakground.errors import ConfigError

TIMEOUT_ENV = "WEAKGROUND_DIST_TIMEOUT_MINUTES"  # how long ranks wait at a barrier (rank 0 validating, say)


def launched_distributed() -> bool:
    """True when torchrun (or a launcher like it) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes files, prints and shows progress bars."""
    return rank() == 0


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    if active():
        dist.barrier()


@contextlib.contextmanager
def session(device_type: str) -> Iterator[None]:
    """Join the process group for the duration of a run when torchrun launched this process (gloo on CPU,
    NCCL on CUDA with this process on ``cuda:LOCAL_RANK``); other ranks' stdout is silenced so each line is
    printed once, by rank 0. A group made by the caller is used as it is and left open."""
    if not launched_distributed() or dist.is_initialized():
        yield
        return
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(minutes=float(os.environ.get(TIMEOUT_ENV, "60")))
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timeout)
    try:
        with open(os.devnull, "w") as devnull:
            with contextlib.redirect_stdout(devnull) if rank() else contextlib.nullcontext():
                yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks: what rank 0 repairs in the run directory (a
    resumed checkpoint) the others then only read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """Run the block on each node's local rank 0 first, then on the other ranks: data caches and downloads
    are then written by one process per node and only read by the rest."""
    if local_rank() != 0:
        barrier()
    yield
    if local_rank() == 0:
        barrier()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; waits for rank 0 to get there."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_batch_size(batch_size: int, key: str) -> None:
    """Refuse a global batch that cannot be split into equal slices, one per process."""
    if world_size() > 1 and batch_size % world_size():
        raise ConfigError(f"{key} {batch_size} is not divisible by the {world_size()} processes: the global batch is "
                          f"split equally among them (choose a multiple of {world_size()})")


def agree(value: int, what: str) -> None:
    """Fail on every rank at once when the ranks hold different ``value``s (e.g. a resumed epoch)."""
    if not active():
        return
    both = torch.tensor([value, -value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, low = both[0].item(), -both[1].item()
    if high != low:
        raise ConfigError(f"{what} differs between processes ({low:.0f} to {high:.0f}): the run directory "
                          f"must be one every node sees (a shared filesystem)")


def _rows(batch: dict[str, Any]) -> int:
    return next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list, tuple)))


def slice_bounds(rows: int, rank: int, size: int) -> tuple[int, int, float]:
    """Rank ``rank``'s rows ``[start, stop)`` of ``rows`` split among ``size`` ranks, and their share of the
    rows; a rank left without a row gets row 0 with share 0."""
    start, stop = rank * rows // size, (rank + 1) * rows // size
    share = (stop - start) / rows
    return (start, stop, share) if stop > start else (0, 1, 0.0)


def shard(batch: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """This rank's contiguous slice of a global ``batch`` and its share of the rows.

    Every tensor and list (``"captions"``) with the batch's row count is sliced alike; anything else is shared.
    Slices differ by at most one row (a task's short last batch); a rank left without a row computes on row 0
    with share 0, so it still joins the gradient all-reduce but adds nothing to it.
    """
    if not active():
        return batch, 1.0
    n = _rows(batch)
    start, stop, share = slice_bounds(n, rank(), world_size())
    local = {}
    for key, value in batch.items():
        if isinstance(value, (torch.Tensor, list, tuple)):
            if len(value) != n:
                raise ValueError(f"batch field {key!r} has {len(value)} rows, the batch has {n}: cannot shard it")
            value = value[start:stop]
        local[key] = value
    return local, share


def weighted_mean(values: dict[str, float], share: float) -> dict[str, float]:
    """The global batch's mean of per-rank means ``values``, each weighted by its rank's share of the rows."""
    if not active():
        return values
    keys = sorted(values)
    summed = torch.tensor([values[k] * share for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return dict(zip(keys, summed.tolist()))


class LossForward(nn.Module):
    """``forward(batch) = module.loss(batch)``. DDP's gradient hooks are armed by ``forward``; the trainer
    calls a method's ``loss``, so this wrapper routes it through ``forward`` (rather than averaging gradients by
    hand after backward), keeping DDP's bucketing and its overlap of all-reduce with the backward pass."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.module.loss(batch)


def _trainable_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())
               for m in model.modules())


def data_parallel(model: nn.Module, device: torch.device) -> Callable[[dict[str, Any]], dict[str, torch.Tensor]]:
    """``model.loss``, run through DistributedDataParallel when there are several processes.

    Only trainable parameters are registered with DDP (frozen encoders have none to reduce);
    ``find_unused_parameters`` lets a step leave some trainable part out of its loss (a captioner's grounding
    prior when ``mu`` is 0, an absent-query head with no absent query). Trainable BatchNorm becomes
    SyncBatchNorm on CUDA; on CPU (gloo) its batch statistics stay per process, which one line says.
    """
    if not active():
        return model.loss
    if _trainable_batchnorm(model):
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif is_main():
            print(f"note: BatchNorm statistics are computed per process ({world_size()} slices of each batch); "
                  f"SyncBatchNorm needs CUDA, so this run is not the single-process run's exact equal")
    wrapper = LossForward(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(wrapper, device_ids=ids, find_unused_parameters=True)
