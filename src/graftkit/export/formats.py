"""The export formats, registered in :data:`EXPORTERS`.

Each :class:`Exporter` writes the model file of a bundle from the run's modality's
:class:`~graftkit.modalities.base.ExportSignature` (an eval-mode, contiguous-format module that
takes its inputs positionally: an image model one ``image`` (batch, 3, H, W), a text model
``input_ids``, ``attention_mask`` (and ``token_type_ids``), (batch, sequence) each), and loads the
written file back as a function ``feeds by input name -> (N, K) logits`` so the export is checked
on the file a user will get, not on the in-memory model.

- ``onnx``: ``torch.onnx.export(dynamo=True)`` (the ``torch.export``-based exporter, the default
  since torch 2.9; it needs ``onnxscript``). The TorchScript-based exporter (``dynamo=False``)
  still runs on torch 2.14 but warns that it will be removed, and opsets below 18 are silently
  kept at 18 by the new exporter, so both are refused. Inputs named as in the signature, output
  ``logits`` (batch, K), the signature's named axes dynamic (the batch; a text's sequence),
  weights inside the one file.
- ``torchscript``: ``torch.jit.trace``; torch 2.14 marks ``torch.jit`` deprecated (it still
  works), for users whose serving stack loads TorchScript.
- ``safetensors``: the weights only (no pickle); bundle.json (and a text bundle's
  ``text_model/config.json``) hold what rebuilds the network through the modality:
  :func:`rebuild_from_bundle`.
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

from .. import modalities
from ..errors import GraftError
from ..modalities.base import ExportSignature, dynamic_shapes
from ..models.base import restore_head
from ..registry import Registry
from ..train.checkpoint import atomic_save, load_weights
from .light import read_bundle

OUTPUT = "logits"
MIN_OPSET = 18  # the torch.export-based exporter's lowest; it keeps 18 if asked for less

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds by input name -> (N, K)


@dataclass(frozen=True)
class Exporter:
    title: str  # in messages: "ONNX export does not match ..."
    filename: str
    # (eval model, its export signature, file, ONNX opset or None) -> extra bundle.json keys
    write: Callable[[nn.Module, ExportSignature, Path, int | None], dict[str, Any]]
    load: Callable[[Path, dict[str, Any]], Runner]  # (bundle dir, bundle.json) -> logits fn
    backend: Callable[[], str]  # what runs the exported file in the parity check
    requires: tuple[str, ...] = ()  # modules beyond graftkit's own dependencies


EXPORTERS: Registry[Exporter] = Registry("export format")


def _torch_runner(module: Callable[..., torch.Tensor], bundle: dict[str, Any]) -> Runner:
    names = [i["name"] for i in bundle["inputs"]]

    @torch.no_grad()
    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return module(*(torch.from_numpy(feeds[n]) for n in names)).float().numpy()

    return run


def _write_onnx(model: nn.Module, sig: ExportSignature, path: Path, opset: int | None
                ) -> dict[str, Any]:
    import onnx
    import onnxscript

    try:
        with warnings.catch_warnings():  # inputs sharing an axis: it says it keeps one name
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            torch.onnx.export(sig.module, sig.example, str(path),
                              input_names=[i["name"] for i in sig.inputs], output_names=[OUTPUT],
                              opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes(sig),
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
    return lambda feeds: sess.run(None, feeds)[0]


def _onnx_backend() -> str:
    import onnxruntime as ort

    return f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _write_torchscript(model: nn.Module, sig: ExportSignature, path: Path, _opset: int | None
                       ) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        # A traced branch on a shape is fixed (a text encoder has some): the parity check runs
        # the saved file on other batch sizes and lengths.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # transformers calls its own deprecated API while a text encoder is traced; not ours
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        # check_trace re-runs the trace (seconds); the parity check runs the saved file instead.
        torch.jit.trace(sig.module, sig.example, check_trace=False).save(str(path))
    return {"exporter": f"torch.jit.trace with torch {torch.__version__}"}


def _load_torchscript(bundle_dir: Path, bundle: dict[str, Any]) -> Runner:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        module = torch.jit.load(str(bundle_dir / bundle["model_file"]), map_location="cpu")
    run = _torch_runner(module.eval(), bundle)

    def unoptimised(feeds: dict[str, np.ndarray]) -> np.ndarray:
        # The profiling executor spends seconds optimising the first calls; a check runs twice.
        with torch.jit.optimized_execution(False):
            return run(feeds)

    return unoptimised


def _write_safetensors(model: nn.Module, sig: ExportSignature, path: Path, _opset: int | None
                       ) -> dict[str, Any]:
    atomic_save(model.state_dict(), path)
    return {"exporter": "safetensors (weights only); rebuild with "
            "graftkit.export.formats.rebuild_from_bundle"}


def _rebuild(bundle_dir: Path, bundle: dict[str, Any]) -> Any:
    model = restore_head(modalities.get(bundle["modality"]).rebuild(bundle_dir, bundle),
                         bundle["model"])
    load_weights(model, bundle_dir / bundle["model_file"])
    return model.eval()


def _load_safetensors(bundle_dir: Path, bundle: dict[str, Any]) -> Runner:
    model = _rebuild(bundle_dir, bundle)
    return _torch_runner(modalities.get(bundle["modality"]).export_signature(model).module, bundle)


def rebuild_from_bundle(bundle_dir: str | Path) -> Any:
    """The eval-mode network of a safetensors bundle, rebuilt by its modality (timm, or the
    encoder config and tokenizer in the bundle's ``text_model/``; no download)."""
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
EXPORTERS.register("safetensors", "model.safetensors + bundle.json to rebuild it (graftkit)")(
    Exporter("safetensors", "model.safetensors", _write_safetensors,
             _load_safetensors, lambda: f"graftkit rebuild, torch {torch.__version__}"))
