"""The export formats, registered in :data:`EXPORTERS`.

Each :class:`Exporter` writes the model file of a bundle from an eval-mode, contiguous-format
model, and loads the written file back as a function ``(N, 3, H, W) float32 -> (N, K) logits``
so the export is checked on the file a user will get, not on the in-memory model.

- ``onnx``: ``torch.onnx.export(dynamo=True)`` (the ``torch.export``-based exporter, the default
  since torch 2.9; it needs ``onnxscript``). The TorchScript-based exporter (``dynamo=False``)
  still runs on torch 2.14 but warns that it will be removed, and opsets below 18 are silently
  kept at 18 by the new exporter, so both are refused. Input ``image`` (batch, 3, H, W), output
  ``logits`` (batch, K), batch dimension dynamic, weights inside the one file.
- ``torchscript``: ``torch.jit.trace``; torch 2.14 marks ``torch.jit`` deprecated (it still
  works), for users whose serving stack loads TorchScript.
- ``safetensors``: the weights only (no pickle); bundle.json holds what rebuilds the network
  with timm (arch, num_outputs, dropout): :func:`rebuild_from_bundle`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.transforms import DataConfig
from ..errors import GraftError
from ..models.vision import TimmAdapter, rebuild_model
from ..registry import Registry
from ..train.checkpoint import atomic_save, load_weights
from .light import read_bundle

INPUT, OUTPUT = "image", "logits"
MIN_OPSET = 18  # the torch.export-based exporter's lowest; it keeps 18 if asked for less

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Exporter:
    title: str  # in messages: "ONNX export does not match ..."
    filename: str
    # (eval model, file, ONNX opset or None) -> extra bundle.json keys
    write: Callable[[nn.Module, Path, int | None], dict[str, Any]]
    load: Callable[[Path, dict[str, Any]], Runner]  # (bundle dir, bundle.json) -> logits fn
    backend: Callable[[], str]  # what runs the exported file in the parity check
    requires: tuple[str, ...] = ()  # modules beyond graftkit's own dependencies


EXPORTERS: Registry[Exporter] = Registry("export format")


def _example(model: nn.Module) -> torch.Tensor:
    size = model.data_config.input_size
    # Batch 2: torch.export specialises a dimension whose example size is 1.
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _torch_runner(module: Callable[[torch.Tensor], torch.Tensor]) -> Runner:
    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).float().numpy()

    return run


def _write_onnx(model: nn.Module, path: Path, opset: int | None) -> dict[str, Any]:
    import onnx
    import onnxscript

    try:
        torch.onnx.export(model, (_example(model),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=opset, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},),
                          external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0]  # no colours
        raise GraftError(f"ONNX export failed ({type(e).__name__}: {first}); try --format "
                         "torchscript or safetensors") from None
    proto = onnx.load(str(path), load_external_data=False)
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": written, "exporter": f"torch.onnx.export(dynamo=True) with onnx "
            f"{onnx.__version__}, onnxscript {onnxscript.__version__}"}


def _load_onnx(bundle_dir: Path, bundle: dict[str, Any]) -> Runner:
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(bundle_dir / bundle["model_file"]),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise GraftError(f"onnxruntime cannot load the exported model: "
                         f"{str(e).strip().splitlines()[0]}") from None
    return lambda x: sess.run(None, {INPUT: x})[0]


def _onnx_backend() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _write_torchscript(model: nn.Module, path: Path, _opset: int | None) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        # check_trace re-runs the trace (seconds); the parity check runs the saved file instead.
        torch.jit.trace(model, _example(model), check_trace=False).save(str(path))
    return {"exporter": f"torch.jit.trace with torch {torch.__version__}"}


def _load_torchscript(bundle_dir: Path, bundle: dict[str, Any]) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        module = torch.jit.load(str(bundle_dir / bundle["model_file"]), map_location="cpu")
    run = _torch_runner(module.eval())

    def unoptimised(x: np.ndarray) -> np.ndarray:
        # The profiling executor spends seconds optimising the first calls; a check runs twice.
        with torch.jit.optimized_execution(False):
            return run(x)

    return unoptimised


def _write_safetensors(model: nn.Module, path: Path, _opset: int | None) -> dict[str, Any]:
    atomic_save(model.state_dict(), path)
    return {"exporter": "safetensors (weights only); rebuild with "
            "graftkit.export.formats.rebuild_from_bundle"}


def _rebuild(bundle_dir: Path, bundle: dict[str, Any]) -> TimmAdapter:
    m = bundle["model"]
    model = rebuild_model(m["arch"], bundle["num_outputs"], m["dropout"],
                          DataConfig.from_dict(bundle["preprocessing"]))
    load_weights(model, bundle_dir / bundle["model_file"])
    return model.eval()


def rebuild_from_bundle(bundle_dir: str | Path) -> TimmAdapter:
    """The eval-mode network of a safetensors bundle, rebuilt with timm (no download)."""
    p = Path(bundle_dir).expanduser()
    bundle = read_bundle(p)
    if bundle["model_format"] != "safetensors":
        raise GraftError(f"{str(p)!r} holds a {bundle['model_format']} model, not safetensors "
                         "weights")
    return _rebuild(p, bundle)


EXPORTERS.register("onnx", "model.onnx for onnxruntime (and BundlePredictor, no torch)")(
    Exporter("ONNX", "model.onnx", _write_onnx, _load_onnx, _onnx_backend,
             requires=("onnx", "onnxscript", "onnxruntime")))
EXPORTERS.register("torchscript", "model.torchscript.pt for torch.jit.load")(
    Exporter("TorchScript", "model.torchscript.pt", _write_torchscript, _load_torchscript,
             lambda: f"torch.jit.load, torch {torch.__version__}"))
EXPORTERS.register("safetensors", "model.safetensors + bundle.json to rebuild it with timm")(
    Exporter("safetensors", "model.safetensors", _write_safetensors,
             lambda d, b: _torch_runner(_rebuild(d, b)),
             lambda: f"graftkit rebuild (timm), torch {torch.__version__}"))
