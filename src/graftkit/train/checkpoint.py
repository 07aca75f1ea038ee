"""Checkpoints in safetensors (never pickle), written atomically.

The resumable training state is ONE file: model weights, optimizer tensors, and the rest (epoch,
stage, scheduler, best metric, optimizer hyper-parameters) as JSON in the safetensors metadata.
One file replaced with ``os.replace`` means a run killed at any instant leaves either the previous
state or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import GraftError
from ..run import usual_mode


def atomic_save(
    tensors: dict[str, torch.Tensor], path: str | Path, meta: dict[str, str] | None = None
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        try:
            save_file(plain, tmp, metadata=meta)
        except SafetensorError as e:  # its I/O errors (a full disk) as the OSError they are
            found = re.search(r"os error (\d+)", str(e))
            if not found:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(path)) from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    atomic_save(model.state_dict(), path)


@contextlib.contextmanager
def _readable(path: str | Path) -> Iterator[None]:
    """A damaged (truncated, overwritten) safetensors file of a run: the user's one-line
    error, not safetensors' traceback."""
    try:
        yield
    except SafetensorError as e:
        raise GraftError(f"{path} is damaged ({e}); restore it from a copy or train the run "
                         "again") from None


def check_readable(path: str | Path) -> None:
    """Read a safetensors file's header (and its size against it) without loading tensors."""
    with _readable(path), safe_open(str(path), framework="pt") as f:
        f.keys()


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    with _readable(path):
        sd = load_file(str(path))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # names or shapes of another model
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise GraftError(f"{path} does not fit this run's model ({first}); was it copied from "
                         "another run?") from None


def _split_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    for idx, st in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's state-dict names and bytes: the same for the same
    weights on any device, layout or thread count, another after any training step. It keys the
    feature cache and the engines, and checks a resumed probe's backbone."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    info: dict[str, Any],
    extra: dict[str, torch.nn.Module] | None = None,
    frozen: tuple[str, str] | None = None,
    tensors: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """One file (written atomically): the model's and the optimizer's tensors, the scheduler and
    ``info``; ``extra`` modules (the weights' moving average) under their own prefix.

    ``frozen`` = (attribute, its :func:`weights_digest`): a part of the model that has never
    trained in this run (the backbone of a linear probe), left out of the file. The model rebuilt
    to resume holds it again, and must match the digest (:func:`load_state`). A probe's state is
    then the head's few kilobytes instead of the whole network each epoch."""
    out = {f"model.{k}": v for k, v in model.state_dict().items()
           if frozen is None or not k.startswith(frozen[0] + ".")}
    groups = {**{n: m.state_dict() for n, m in (extra or {}).items()}, **(tensors or {})}
    for name, group in groups.items():
        out.update({f"{name}.{k}": v for k, v in group.items()})
    opt_tensors, opt_meta = _split_optimizer(optimizer)
    out.update(opt_tensors)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {"info": json.dumps(info), "optimizer": json.dumps(opt_meta),
            "scheduler": json.dumps(sched)}
    if frozen is not None:
        meta["frozen"] = json.dumps({"prefix": frozen[0], "digest": frozen[1]})
    atomic_save(out, path, meta)


def _load_model(model: torch.nn.Module, sd: dict[str, torch.Tensor], meta: dict[str, str],
                path: str | Path) -> None:
    """``sd`` into ``model``; a state saved without its frozen part (``save_state(frozen=)``)
    needs the model to hold that part as it was, checked by its digest."""
    if "frozen" not in meta:
        model.load_state_dict(sd, strict=True)
        return
    frozen = json.loads(meta["frozen"])
    part = getattr(model, frozen["prefix"])
    if weights_digest(part) != frozen["digest"]:
        raise GraftError(f"{path}: the model rebuilt to resume has other {frozen['prefix']} "
                         "weights than the run had (were model.weights or the pretrained files "
                         "changed?); start the run again")
    rest = {k for k in model.state_dict() if not k.startswith(frozen["prefix"] + ".")}
    if set(sd) != rest:
        raise GraftError(f"{path}: the checkpoint does not fit this model (missing "
                         f"{sorted(rest - set(sd))[:3]}, unexpected {sorted(set(sd) - rest)[:3]})")
    model.load_state_dict(sd, strict=False)


def leaves_out(path: str | Path) -> str | None:
    """The part of the model a state file leaves out (``save_state(frozen=)``), if any: the
    model rebuilt to resume must load that part's weights itself."""
    with _readable(path), safe_open(str(path), framework="pt") as f:
        frozen = (f.metadata() or {}).get("frozen")
    return json.loads(frozen)["prefix"] if frozen else None


def read_state_info(path: str | Path) -> dict[str, Any]:
    with _readable(path), safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["info"])


def load_model_state(path: str | Path, model: torch.nn.Module, prefix: str = "model") -> None:
    """Only the model weights of a resumable state file (or those of an ``extra`` module saved
    under ``prefix``)."""
    with _readable(path), safe_open(str(path), framework="pt") as f:
        sd, meta = _prefixed(f, prefix), f.metadata() or {}
    _load_model(model, sd, meta if prefix == "model" else {}, path)


def load_prefixed(path: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors a state file holds under ``prefix`` (the prefix taken off their names)."""
    with _readable(path), safe_open(str(path), framework="pt") as f:
        return _prefixed(f, prefix)


def _prefixed(f: Any, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix + ".")}


def load_state(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    with _readable(path):
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
    _load_model(model, {k[len("model."):]: v for k, v in tensors.items()
                        if k.startswith("model.")}, meta, path)
    optimizer.load_state_dict(_join_optimizer(tensors, json.loads(meta["optimizer"])))
    sched = scheduler.state_dict()
    sched.update(json.loads(meta["scheduler"]))
    scheduler.load_state_dict(sched)
    return json.loads(meta["info"])
