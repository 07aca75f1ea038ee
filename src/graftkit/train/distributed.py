"""Training on several processes: torchrun's workers, DistributedDataParallel, and the few
collectives the loop needs.

Each worker knows its place from the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); :func:`start` joins the process group (gloo on CPU, NCCL
on CUDA). What the loop does with it:

- a stage that trains the backbone splits every *global* batch (``data.batch_size``, the same
  batches, in the same seeded order, as a single-process run) into one contiguous slice per rank
  (:class:`GlobalBatches`); each rank's loss is scaled by its share of the batch so that DDP's
  mean of the ranks' gradients is the gradient of the global batch's mean loss, also for a last
  batch that does not split evenly;
- feature extraction (the cached probe, final scoring, validation) runs on one contiguous shard
  per rank and the rows are gathered back in order (:func:`gather_rows`);
- head-only stages on cached features are cheap and run on every rank alike;
- only rank 0 writes anything; its per-epoch decisions (best, early stop) are broadcast.

torch's DistributedSampler is not used for the batches: it deals indices round-robin from its own
permutation and pads the last batch with repeated examples, so its batches are not the
single-process run's.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import RandomSampler, Sampler

from ..errors import ConfigError, GraftError, PeerFailed

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class World:
    """This process's place among the workers (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Several processes, and their group is up (it is left before the final scoring)."""
        if self.size <= 1:
            return False
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized()

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (the first ``n % size`` ranks get one
        more)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return range(start, start + per + (self.rank < extra))  # (GlobalBatches cuts so too)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable value; only between our own workers)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, problem: GraftError | None) -> GraftError | None:
        """Every rank learns whether any rank found a mistake: each returns its own (rank 0's
        to print; another rank's only when rank 0 did not find the same), or a silent
        :class:`PeerFailed` when the mistake was another rank's; None when there was none."""
        if not self.active:
            return problem
        import torch.distributed as dist

        said: list[str | None] = [None] * self.size
        dist.all_gather_object(said, None if problem is None else str(problem))
        if problem is not None:
            return problem if self.main or said[0] != str(problem) else PeerFailed(str(problem))
        return peer_failed() if any(m is not None for m in said) else None

    def all_true(self, flag: bool) -> bool:
        if not self.active:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks (float64, on the CPU)."""
        if not self.active:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()


def world_from_env() -> World:
    """The world torchrun describes in the environment (one process when it does not)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return World()
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"torchrun's environment is incomplete or not numbers "
                          f"({', '.join(f'{k}={os.environ.get(k)!r}' for k in ENV_KEYS)}): {e}"
                          ) from None
    return World(rank, size, local, local_size)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def check_backend(device_type: str) -> str:
    """The backend this device trains with, or a one-line error when this torch lacks it."""
    import torch.distributed as dist

    backend = backend_for(device_type)
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed: train with one process "
                          "(drop --nproc / torchrun)")
    ok = dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()
    if not ok:
        raise ConfigError(f"several processes on {device_type} need torch.distributed's "
                          f"{backend} backend, which this torch build lacks")
    return backend


def start(world: World, device: torch.device, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group (once) and return this rank's device (``cuda:LOCAL_RANK`` on
    GPUs)."""
    import torch.distributed as dist

    if world.size <= 1:
        return device
    backend = check_backend(device.type)
    if device.type == "cuda":
        if world.local_size > torch.cuda.device_count():
            raise ConfigError(f"{world.local_size} processes per machine on CUDA need as many "
                              f"GPUs; this machine has {torch.cuda.device_count()}")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"several processes train on cpu or cuda, not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def peer_failed(why: str = "another worker failed; its error is above") -> PeerFailed:
    return PeerFailed(why)


LAUNCHER_ENV = "GRAFT_LAUNCHED"  # set by graft train --nproc for its workers: it reports deaths


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process died or hung up (gloo and
    NCCL raise RuntimeError)."""
    import torch.distributed as dist

    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        k in text for k in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))


def leave(sync: bool = False) -> None:
    """Leave the process group. ``sync`` (every rank finished normally): wait for the others
    first, so that no rank tears down gloo's connections while a peer's last collective is still
    in flight (that aborts the peer: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def gather_rows(x: torch.Tensor, world: World) -> torch.Tensor:
    """Every rank's rows (its :meth:`World.shard`), concatenated in rank order, on every rank."""
    if not world.active:
        return x
    import torch.distributed as dist

    dev = x.device if x.device.type == "cuda" else torch.device("cpu")
    counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world.size)]
    dist.all_gather(counts, torch.tensor([len(x)], dtype=torch.int64, device=dev))
    most = max(int(c.item()) for c in counts)
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[:len(x)] = x.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(c.item())] for p, c in zip(parts, counts)]).to(x.device)


class GlobalBatches(Sampler[list[int]]):
    """The single-process run's batches (same order: a ``RandomSampler`` drawn from the epoch's
    generator, then consecutive batches of ``batch_size``), each cut into ``world.size``
    contiguous slices; this rank iterates over its slice of each. ``weights[i]`` is the factor
    that makes this rank's mean loss on batch ``i`` count as its share of the global mean
    (``len(slice) * size / len(batch)``; 1 when the batch splits evenly). A rank whose slice of a
    short last batch would be empty gets the batch's first example with weight 0, so every rank
    takes part in every step."""

    def __init__(self, n: int, batch_size: int, world: World,
                 generator: torch.Generator | None = None, drop_last: bool = False) -> None:
        self.n, self.batch_size, self.world = n, batch_size, world
        self.generator, self.drop_last = generator, drop_last
        self.weights: list[float] = []

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(RandomSampler(range(self.n), generator=self.generator))
        self.weights.clear()  # in place: the training loop holds this list
        for i in range(len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            part = self.world.shard(len(batch))
            mine = batch[part.start:part.stop]
            if mine:
                self.weights.append(len(mine) * self.world.size / len(batch))
                yield mine
            else:
                self.weights.append(0.0)
                yield batch[:1]


def wrap(model: torch.nn.Module, device: torch.device, bn_trains: bool) -> torch.nn.Module:
    """``model`` in DistributedDataParallel over its parameters that train now (DDP fixes the
    set when it is built: gradual unfreezing wraps again when it grows). Parameters that train
    but take no part in a forward pass (wav2vec2's masked_spec_embed) are allowed unless the
    adapter says every parameter is used (``all_params_used``). Buffers
    (BatchNorm statistics) are broadcast from rank 0 before each forward only when BatchNorm
    trains."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.12 names it forward_sync_buffers (it syncs at construction either way, which
    # changes nothing here: every rank starts from the same weights)
    sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else "broadcast_buffers")
    return DDP(model, device_ids=ids, **{sync: bn_trains},  # type: ignore[arg-type]
               find_unused_parameters=not getattr(model, "all_params_used", False))


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> bool:
    """BatchNorm layers that train use SyncBatchNorm on CUDA (the statistics of the global
    batch); returns whether it did. torch's SyncBatchNorm has no CPU kernel, so on CPU each rank
    keeps statistics of its own slice (graftkit freezes BatchNorm statistics by default,
    ``train.freeze_bn``)."""
    if device.type != "cuda":
        return False
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    if converted is not model.backbone:
        model.backbone = converted
    return True
