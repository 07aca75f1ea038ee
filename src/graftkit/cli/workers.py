"""``graft train --nproc N``: N training processes on this machine under torchrun's own elastic
agent (``torch.distributed.launcher``), each running ``graft train`` with the same arguments.

The run directory is chosen here, before the workers start, so that every message can name it.
A worker that dies (killed, out of memory) stops the others; the run keeps its last finished
epoch, ``meta.json`` says what happened, and ``graft train --resume RUN [--nproc M]`` goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from ..errors import GraftError


def worker_args(argv: list[str], out: Path | None) -> list[str]:
    """The command line of each worker: this one without ``--nproc``, with ``--out``."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    if out is not None and not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    return args


def launch(argv: list[str], nproc: int, out_dir: Path) -> None:
    """Run the workers; a failure becomes one line (a worker's own error was printed by it)."""
    os.environ.setdefault("LOGLEVEL", "CRITICAL")  # (read when those loggers are made)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ..train.distributed import LAUNCHER_ENV

    # the agent's own log lines ("Received 2 death signal, ...") would come on top of the one
    # line this command prints; each of its loggers sets its level from $LOGLEVEL
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_ENV] = "1"  # the workers inherit it: a death is reported here, once
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "graftkit.cli.main", *argv)
    except SignalException as e:  # Ctrl-C: the workers got it too, and rank 0 said how to go on
        raise SystemExit(130 if e.sigval == signal.SIGINT else 1) from None
    except ChildFailedError as e:
        # a worker's own error or an interrupt was reported by it: that is the failure, whatever
        # the others did after it; else the first worker that died (one that only followed
        # another exits PEER_EXIT, 0, and is no failure at all)
        for code in (2, 130):
            if any(f.exitcode == code for f in e.failures.values()):
                raise SystemExit(code) from None
        rank, failure = e.get_first_failure()
        raise GraftError(_died(out_dir, rank, nproc, failure.exitcode)) from None


def _died(out_dir: Path, rank: int, nproc: int, code: int) -> str:
    """The line for a worker that died, after recording it in ``meta.json``."""
    from .. import run as rd

    how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and
           -code in signal.Signals._value2member_map_ else f"exited with status {code}")
    reason = f"training process {rank} of {nproc} {how}"
    meta_path = out_dir / rd.META
    if meta_path.is_file():
        meta = rd.read_json(meta_path)
        if meta.get("status") == "completed":
            return f"{reason} after the run completed: {out_dir}"
        meta.update(status="failed", failure=reason)
        rd.write_json(meta_path, meta)
    if (out_dir / rd.STATE).is_file():
        return (f"{reason}; the last finished epoch is kept; continue with: graft train "
                f"--resume {out_dir} [--nproc N]")
    return f"{reason} before the first epoch finished; start again"


def check_launch(nproc: int, device: str, batch_size: int) -> None:
    """What ``--nproc`` needs, checked before any worker starts."""
    if "WORLD_SIZE" in os.environ:
        raise GraftError("--nproc starts its own workers; under torchrun, drop it (torchrun's "
                         "--nproc-per-node says how many)")
    from ..train.device import resolve_device
    from ..train.distributed import check_backend

    dev = resolve_device(device)
    check_backend(dev.type)
    if dev.type == "cuda":
        import torch

        if nproc > torch.cuda.device_count():
            raise GraftError(f"--nproc {nproc} on CUDA needs {nproc} GPUs; this machine has "
                             f"{torch.cuda.device_count()}")
    elif dev.type != "cpu":
        raise GraftError(f"--nproc trains on cpu or cuda, not {dev.type}")
    if batch_size % nproc:
        raise GraftError(f"--nproc {nproc}: the global batch of {batch_size} (data.batch_size) "
                         f"does not split over {nproc} processes; give a multiple of {nproc}")
