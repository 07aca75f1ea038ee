"""Several training processes: the batch split, the loss weighting that makes DDP's averaged
gradient the single-process one (also for a short last batch), the collectives, and the launcher's
command line. Real gloo process groups on the CPU, two or three processes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from graftkit.errors import GraftError
from graftkit.train.distributed import GlobalBatches, World


def _single_batches(n: int, batch: int, seed: int) -> list[list[int]]:
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    return [b[0].tolist() for b in loader]


@pytest.mark.parametrize("n,batch,size", [(23, 8, 2), (24, 8, 2), (25, 9, 3), (9, 8, 3),
                                          (5, 4, 4)])
def test_the_ranks_slices_make_up_the_single_process_batches(n: int, batch: int,
                                                             size: int) -> None:
    single = _single_batches(n, batch, seed=7)
    per_rank = []
    for r in range(size):
        world = World(rank=r, size=size, local_rank=r, local_size=size)
        gen = torch.Generator().manual_seed(7)
        sampler = GlobalBatches(n, batch, world, gen)
        held = sampler.weights  # as the training loop takes it, before the epoch starts
        # the DataLoader draws its base seed from the generator first, as a shuffled one does
        loader = DataLoader(TensorDataset(torch.arange(n)), batch_sampler=sampler, generator=gen)
        got = [b[0].tolist() for b in loader]
        assert held is sampler.weights and len(held) == len(got)
        per_rank.append((got, list(sampler.weights)))
        assert len(got) == len(single) == len(sampler)
    for i, batch_ids in enumerate(single):
        joined, weight_sum = [], 0.0
        for got, weights in per_rank:
            if weights[i] > 0:
                joined += got[i]
                assert weights[i] == pytest.approx(len(got[i]) * size / len(batch_ids))
            else:  # an empty slice of a short batch: one example that counts for nothing
                assert got[i] == batch_ids[:1]
            weight_sum += weights[i]
        assert joined == batch_ids  # contiguous slices, in rank order
        assert weight_sum == pytest.approx(size)  # DDP divides by the world size


def test_shards_cover_everything_once() -> None:
    for size in (1, 2, 3, 5):
        parts = [list(World(r, size, r, size).shard(11)) for r in range(size)]
        assert sum(parts, []) == list(range(11))
    assert list(World().shard(4)) == [0, 1, 2, 3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_linear(world: World, steps_data: tuple[torch.Tensor, torch.Tensor], batch: int,
                  epochs: int) -> torch.nn.Module:
    """A linear model trained by graftkit's own train_step on GlobalBatches (in DDP when the
    world has several processes)."""
    from graftkit.train.distributed import wrap
    from graftkit.train.settings import LoopSettings
    from graftkit.train.step import train_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    x, y = steps_data
    s = LoopSettings(task="classification", classes=["a", "b", "c"], batch_size=batch,
                     world=world)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    forward = wrap(model, torch.device("cpu"), bn_trains=False) if world.active else model
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for e in range(epochs):
        gen = torch.Generator().manual_seed(100 + e)
        sampler = GlobalBatches(len(x), batch, world, gen)
        loader = DataLoader(TensorDataset(x, y), batch_sampler=sampler, generator=gen)
        for i, (xb, yb) in enumerate(loader):
            loss, n = train_step(model, forward, xb, yb, loss_fn, s, opt, scaler,
                                 weight=sampler.weights[i])
            losses.append(loss)
    model.losses = losses  # type: ignore[assignment]
    return model


def _data(n: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


def _worker(rank: int, size: int, n: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    done = False
    try:
        world = World(rank, size, rank, size)
        model = _train_linear(world, _data(n), batch=8, epochs=3)
        from graftkit.train.distributed import gather_rows

        rows = gather_rows(torch.full((len(world.shard(7)), 2), float(rank)), world)
        if rank == 0:
            torch.save({"state": model.state_dict(), "losses": model.losses, "rows": rows}, out)
        dist.barrier()  # as graftkit's own leave(sync=True): nobody tears down mid-collective
        done = True
    finally:
        dist.destroy_process_group()
    if done:  # as `graft` itself leaves (cli.main.entry): no interpreter teardown, in which gloo's
        os._exit(0)  # threads aborted a rank once in CI ('terminate called without an active ...')


@pytest.mark.parametrize("size,n", [(3, 17)])
def test_ddp_with_weighted_slices_equals_one_process(size: int, n: int, tmp_path: Path) -> None:
    """Three epochs of SGD with momentum in batches of 8 over 17 examples on three processes:
    each batch of 8 splits 3/3/2, the last batch is one example and two ranks take part with
    weight 0. The distributed run's weights equal the single-process run's within 1e-6."""
    torch.set_num_threads(1)
    single = _train_linear(World(), _data(n), batch=8, epochs=3)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(size, n, _free_port(), str(out)), nprocs=size, join=True)
    got = torch.load(out)
    for k, v in single.state_dict().items():
        assert (got["state"][k] - v).abs().max() <= 1e-6, k
    assert got["losses"] == pytest.approx(single.losses, abs=1e-6)  # the global batches' loss
    assert (single.state_dict()["2.weight"] - _train_linear(World(), _data(n), 8, 0)
            .state_dict()["2.weight"]).abs().max() > 0.1  # and training moved the weights
    # gather_rows: every rank's shard back in rank order
    expect = torch.cat([torch.full((len(World(r, size, r, size).shard(7)), 2), float(r))
                        for r in range(size)])
    assert torch.equal(got["rows"], expect)


def test_worker_command_line_drops_nproc_and_names_the_run() -> None:
    from graftkit.cli.workers import worker_args

    argv = ["--threads", "2", "train", "--data", "d", "--nproc", "2", "--nproc=3", "x=1"]
    assert worker_args(argv, Path("runs/r")) == ["--threads", "2", "train", "--data", "d",
                                                 "x=1", "--out", "runs/r"]
    assert worker_args(["train", "--out", "o", "--nproc", "2"], Path("p")) == [
        "train", "--out", "o"]
    assert worker_args(["train", "--resume", "o", "--nproc", "2"], None) == [
        "train", "--resume", "o"]


def test_launch_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.cli.workers import check_launch

    with pytest.raises(GraftError, match="does not split over 3 processes"):
        check_launch(3, "cpu", 32)
    check_launch(2, "cpu", 32)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(GraftError, match="under torchrun"):
        check_launch(2, "cpu", 32)


def test_backend_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    from graftkit.train.distributed import check_backend

    monkeypatch.setattr(dist, "is_gloo_available", lambda: False)
    with pytest.raises(GraftError, match="gloo backend"):
        check_backend("cpu")
    monkeypatch.setattr(dist, "is_available", lambda: False)
    with pytest.raises(GraftError, match="no torch.distributed"):
        check_backend("cpu")


def test_incomplete_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from graftkit.train.distributed import world_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(GraftError, match="torchrun's environment"):
        world_from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert world_from_env() == World(1, 2, 1, 2)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert world_from_env() == World()



def test_an_epochs_last_short_group_of_micro_batches_is_their_mean() -> None:
    from graftkit.train.loop import accumulation_group

    assert [accumulation_group(i, 8, 3) for i in range(8)] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert [accumulation_group(i, 5, 1) for i in range(5)] == [1] * 5
    assert [accumulation_group(i, 2, 4) for i in range(2)] == [2, 2]
