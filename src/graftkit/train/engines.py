"""A faster engine for frozen backbones: ONNX Runtime on the CPU.

Feature extraction of a frozen backbone during training (the cached probe, LP-FT's probe stage,
the final scoring of a run whose backbone never trained) can run through ONNX Runtime instead of
eager torch; ``graft audit`` still extracts with torch. The backbone (the model with its head
replaced by the identity, traced through the modality's export signature) is exported once per
weights digest and input signature into ``$GRAFT_CACHE_DIR/engines`` (by torch's TorchScript
exporter, about 1-2 s for a small backbone, or, for a model it cannot trace, by torch.export,
8-15 s); its features are compared with torch's on the signature's example at export and on the
first :data:`PARITY_ROWS` inputs of the first real batch of each process that uses it, and an
engine whose features differ by more than :data:`PARITY` (max abs) is not used (torch is, with
a warning, and the refusal is kept so the export is not retried).

``train.feature_engine``: ``torch``; ``onnx`` (needs ``pip install 'graftkit[export]'``); ``auto``
(the default): ONNX Runtime when it is installed, on the CPU in fp32, and when the extraction is
large enough to repay a first export (the modality's ``engine_min_inputs``) or the engine was
exported before.
What ran is in meta.json's ``feature_engine``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .features import cache_dir

PARITY = 1e-4  # max abs difference from torch's features, checked at export
PARITY_ROWS = 8  # inputs of a process's first real batch compared with torch's features
# auto exports when one extraction has this many inputs (the modality's engine_min_inputs, this
# by default): a first export takes about 1.4 s (efficientnet_lite0, TorchScript exporter) and
# ONNX Runtime then saves about 9 ms an image
AUTO_MIN_INPUTS = 200
EXPORTER = 2  # part of the engine key: engines (and refusals) of an older exporter are redone
HINT = "pip install 'graftkit[export]' (onnx, onnxruntime, onnxscript)"

_USED: dict[str, Any] = {}  # what this process's extractions ran on, for meta.json
# engines this process has checked against torch: (file, its mtime, threads) -> (runner, diff)
_READY: dict[tuple[str, int, int], tuple[Callable[[Any], torch.Tensor], float]] = {}


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("onnx", "onnxruntime", "onnxscript"))


def check(engine: str) -> None:
    """``train.feature_engine=onnx`` needs ONNX Runtime: a one-line error before any work."""
    if engine == "onnx" and not available():
        raise ConfigError(f"config key 'train.feature_engine': onnx needs ONNX Runtime; {HINT}")


def engine_dir() -> Path:
    return cache_dir().parent / "engines"


def engine_key(weights_digest: str, input_signature: str) -> str:
    import hashlib
    from importlib.metadata import version

    # the installed version, without importing onnxruntime (choose() runs on every extraction)
    raw = f"{weights_digest}|{input_signature}|torch {torch.__version__}|ort " \
          f"{version('onnxruntime')}|exporter {EXPORTER}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _not_refused(info: Path) -> bool:
    """An exported engine whose parity check has not refused it (its ``.json`` says ``ok``)."""
    try:
        return json.loads(info.read_text()).get("ok", True) is not False
    except (OSError, ValueError):
        return True


def choose(engine: str, device: torch.device, amp_dtype: torch.dtype | None, n_inputs: int,
           weights_digest: str, input_signature: str, export: bool = True,
           min_inputs: int = AUTO_MIN_INPUTS) -> str:
    """``torch`` or ``onnx`` for one extraction (see the module's docstring); ``export=False``
    (several processes) uses an engine only when it was exported before; ``auto`` exports one
    for an extraction of ``min_inputs`` or more."""
    if engine == "torch" or device.type != "cpu" or amp_dtype is not None or not available():
        if engine == "onnx" and device.type != "cpu":
            _USED.setdefault("note", f"onnx asked for, but the backbone runs on {device.type}")
        return "torch"
    key = engine_key(weights_digest, input_signature)
    exported = ((engine_dir() / f"{key}.onnx").is_file()
                and _not_refused(engine_dir() / f"{key}.json"))
    if exported or (export and (engine == "onnx" or n_inputs >= min_inputs)):
        return "onnx"
    return "torch"


def min_inputs(model: nn.Module) -> int:
    """The extraction size from which ``auto`` exports this model's backbone (its modality's)."""
    from .. import modalities

    name = getattr(model, "modality", None)
    return modalities.get(name).engine_min_inputs if name else AUTO_MIN_INPUTS


def note_torch() -> None:
    _USED.setdefault("engine", f"torch {torch.__version__} (eager)")


def used() -> dict[str, Any]:
    return dict(_USED)


def reset() -> None:
    _USED.clear()


@torch.no_grad()
def onnx_features(model: nn.Module, weights_digest: str, first_batch: Any,
                  warn: Callable[[str], None]) -> Callable[[Any], torch.Tensor] | None:
    """The backbone's features through ONNX Runtime (exported now if this backbone has no
    engine yet), or None when it cannot be exported or does not match torch (warned once)."""
    from .. import modalities

    sig_owner = modalities.get(model.modality)  # type: ignore[attr-defined]
    key = engine_key(weights_digest, model.input_signature())  # type: ignore[operator]
    path, info_path = engine_dir() / f"{key}.onnx", engine_dir() / f"{key}.json"
    head = model.head
    model.head = nn.Identity()  # the adapter's forward is now its features
    try:
        sig = sig_owner.export_signature(model)
        names = [i["name"] for i in sig.inputs]
        info = json.loads(info_path.read_text()) if info_path.is_file() else None
        if info is None or (info.get("ok") and not path.is_file()):
            info = _export(sig, names, path, info_path)
        if not info.get("ok"):
            warn(f"feature engine: ONNX Runtime not used ({info.get('reason')}); torch runs "
                 "the backbone")
            _USED.update(engine="torch", onnx_refused=info.get("reason"))
            return None
        # checked once per process (its first real batch); later extractions reuse the session
        stamp = (str(path), path.stat().st_mtime_ns, torch.get_num_threads())
        ready = _READY.get(stamp)
        if ready is None:
            sess = _session(path)
            run = _runner(sess, names, sig.feeds)
            # a few rows of the first real batch: torch runs the backbone 2-3x slower than the
            # engine, and a whole batch (32 images) would cost it 0.5 s
            rows = tuple(x[:PARITY_ROWS] for x in sig.feeds(first_batch))
            diff = _max_diff(sig.module(*rows), _runner(sess, names, lambda b: b)(rows))
        else:
            run, diff = ready
    finally:
        model.head = head
    if diff > PARITY:
        reason = f"features differ from torch's by {diff:.2e} on a real batch (> {PARITY:g})"
        info_path.write_text(json.dumps({**info, "ok": False, "reason": reason}))
        warn(f"feature engine: ONNX Runtime not used ({reason}); torch runs the backbone")
        _USED.update(engine="torch", onnx_refused=reason)
        return None
    _READY[stamp] = (run, diff)
    import onnxruntime

    _USED.update(engine=f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)",
                 parity_max_abs=max(diff, info.get("parity_max_abs", 0.0)),
                 threads=torch.get_num_threads(), file=str(path),
                 exporter=info.get("exporter", "dynamo"),
                 export_s=_USED.get("export_s", 0.0) + info.pop("_export_s", 0.0))
    return run


class EngineFeatures:
    """The backbone's features through ONNX Runtime, set up on the first batch (exported once
    per backbone, checked against torch on that batch); torch's when the engine is refused."""

    def __init__(self, model: nn.Module, digest: str, warn: Callable[[str], None]) -> None:
        self.model, self.digest, self.warn = model, digest, warn
        self.fn: Callable[[Any], torch.Tensor] | None = None

    def __call__(self, x: Any) -> torch.Tensor:
        if self.fn is None:
            self.fn = onnx_features(self.model, self.digest, x, self.warn) or (
                self.model.features)
        return self.fn(x)


class FrozenModel:
    """A whole frozen model for long gradient-free passes (``graft robustness``): the head on
    :class:`EngineFeatures` (the model's own forward, ``head(features(x))``, with the backbone
    on ONNX Runtime where it is not refused)."""

    def __init__(self, model: nn.Module, warn: Callable[[str], None]) -> None:
        from .features import weights_digest

        self.head = model.head
        self.features = EngineFeatures(model, weights_digest(model.backbone), warn)

    @torch.no_grad()
    def __call__(self, x: Any) -> torch.Tensor:
        return self.head(self.features(x))


def _trace(sig: Any, names: list[str], tmp: str, dynamo: bool) -> None:
    """Write the ONNX file: TorchScript's exporter (``dynamo=False``: a trace, fast) or
    torch.export's (slower, and the one for a model that a trace cannot express)."""
    import warnings
    from contextlib import ExitStack

    from ..modalities.base import dynamic_shapes
    from ..models.base import static_padding

    with warnings.catch_warnings(), ExitStack() as stack:
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(sig.module, sig.example, tmp, input_names=names,
                              output_names=["features"], dynamo=True,
                              dynamic_shapes=dynamic_shapes(sig), external_data=False,
                              verbose=False)
        else:  # (the export signature's height and width are fixed: its pads are constants)
            stack.enter_context(static_padding(sig.module, sig.example))
            axes = {spec["name"]: {a: d for a, d in enumerate(spec["shape"]) if isinstance(d, str)}
                    for spec in sig.inputs}
            torch.onnx.export(sig.module, sig.example, tmp, input_names=names,
                              output_names=["features"], dynamo=False, dynamic_axes=axes,
                              verbose=False)
            # the trace's constants as initializers, so that ONNX Runtime fuses each convolution
            # with its activation (efficientnet_lite0: 110 img/s as traced, 170 optimised)
            import onnx
            from onnxscript import optimizer

            onnx.save(optimizer.optimize(onnx.load(tmp)), tmp)


@torch.no_grad()
def _export(sig: Any, names: list[str], path: Path, info_path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"ok": False, "reason": "not exported"}
    try:
        expected = sig.module(*sig.example)
    except Exception as e:  # noqa: BLE001
        expected, info["reason"] = None, f"the backbone fails on its example: {e}"[:200]
    try:
        for exporter in ("torchscript", "dynamo") if expected is not None else ():
            try:
                _trace(sig, names, tmp, dynamo=exporter == "dynamo")
                diff = _max_diff(expected,
                                 _runner(_session(Path(tmp)), names, lambda b: b)(sig.example))
            except Exception as e:  # noqa: BLE001 - exporter failures come in many types
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                info = {"ok": False, "reason": f"export failed: {type(e).__name__}: {first}"}
                continue
            info = {"ok": diff <= PARITY, "parity_max_abs": diff, "exporter": exporter}
            if info["ok"]:
                os.replace(tmp, path)
                break
            info["reason"] = f"features differ from torch's by {diff:.2e} (> {PARITY:g})"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    info_path.write_text(json.dumps(info))
    return {**info, "_export_s": time.perf_counter() - t0}


def _session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()  # the one thread setting
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # no spinning between runs: the extraction decodes the next batch on this core meanwhile
    # (efficientnet_lite0, 2 threads: 124-130 -> 148 img/s, decoding included)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _runner(sess: Any, names: list[str], feeds: Callable[[Any], tuple[Any, ...]]
            ) -> Callable[[Any], torch.Tensor]:
    def run(batch: Any) -> torch.Tensor:
        xs = feeds(batch)
        out = sess.run(None, {n: x.detach().cpu().contiguous().numpy()
                              for n, x in zip(names, xs)})[0]
        return torch.from_numpy(out)

    return run


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float()).abs().max())
