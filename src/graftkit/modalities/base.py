"""What a modality is: everything that differs between images, texts and (next) sounds.

A modality is one small module registered by name (``MODALITIES``). It discovers a data source
and reads labeled evaluation data, decodes one input (a path, an in-memory object, or the bytes
of an upload), builds and rebuilds the model adapter, says what batch size suits a gradient-free
pass, gives the input statistics the drift monitor compares, runs the robustness benchmark with
its own perturbation family, explains decisions with the methods it supports, and says whether
the exporters take its models and what they trace (the positional inputs of the exported graph),
what a bundle carries for the torch-free predictor to preprocess, and the model card's wording.
Session, loop, inference, report, serve, export and search ask the run's modality and never
compare modality names.

A new modality must implement ``discover``, ``create_model``, ``rebuild``, ``load`` and ``batch``
(and ``decode_upload`` and ``warmup_input`` to be served); every other method has a default, and
those a modality cannot do (robustness, explain, evaluate --data) refuse with a one-line
:class:`GraftError`, so a consumer needs no capability flags of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GraftError
from ..registry import Registry

Items = list[tuple[str, float]]  # (input, target): an image path, a text, a sound path


@dataclass(frozen=True)
class ExportSignature:
    """What graft export traces: ``module`` (eval mode) takes ``example``'s tensors positionally,
    one per entry of ``inputs`` (bundle.json's ``name``, ``shape`` with named dynamic axes such as
    ``"batch"``, ``dtype``, ``description``) and returns ``(B, K)``; ``feeds`` maps a model batch
    (``batch``) to the same tensors, in that order."""

    module: Any
    example: tuple[Any, ...]
    inputs: list[dict[str, Any]]
    feeds: Callable[[Any], tuple[Any, ...]]


def dynamic_shapes(sig: ExportSignature) -> tuple[dict[int, Any], ...]:
    """torch.export's dynamic dimensions: one ``Dim`` per axis name ("batch", "sequence"), shared
    by every input that has that axis."""
    import torch

    dims: dict[str, Any] = {}
    shapes = []
    for spec in sig.inputs:
        named = {axis: d for axis, d in enumerate(spec["shape"]) if isinstance(d, str)}
        for d in named.values():
            dims.setdefault(d, torch.export.Dim(d))
        shapes.append({axis: dims[d] for axis, d in named.items()})
    return tuple(shapes)


class Modality:
    """The base: defaults and the one-line refusals. Subclasses set the names and override."""

    name = ""
    noun = ""  # "image": "3 images", "this model takes images"
    default_model = ""
    json_field = ""  # graft serve's JSON body: {"images": [base64, ...]} / {"texts": [...]}
    json_help = ""  # its description in the OpenAPI schema
    form_field = ""  # its multipart field: "file" (uploads) / "text" (plain fields)
    form_files = True  # the multipart field holds uploaded files
    accept = ""  # the served web page's file chooser: which files it offers ("image/*")
    explainable = False  # the report's gallery and graft serve's /v1/explain have overlays
    explains_labels = False  # graft explain takes its multi-label runs (one label as target)
    robust_labels = False  # graft robustness takes its multi-label runs (subset accuracy)
    exportable = False  # graft export writes its models
    # train.feature_engine=auto exports a backbone for ONNX Runtime from an extraction this
    # large (its first export, 1-3 s, then repays itself within that extraction)
    engine_min_inputs = 200
    stat_keys: tuple[str, ...] = ()  # the per-input statistics the drift monitor compares
    robustness_kind = "perturbations"  # what graft robustness applies: results.json's "kind"

    # --- data ---------------------------------------------------------------------------------
    def detect(self, path: str | None, d: Any) -> bool:
        """Is ``path`` data of this modality (for ``data.modality: auto``)?"""
        return False

    def check_config(self, cfg: Any) -> None:
        """Refuse config values that make no sense for this modality (ConfigError)."""

    def discover(self, d: Any, task: str, progress: Any = None) -> Any:
        """The run's data (a :class:`graftkit.data.sources.DataSpec`) from the data section."""
        raise GraftError(f"{self.name} data cannot be read yet")

    def eval_items(self, data: str | Path, meta: dict[str, Any], d: Any, split: str | None
                   ) -> tuple[Items, list[dict[str, str]], str]:
        """Labeled items of any folder or file, with the run's label map."""
        raise GraftError(f"graft evaluate --data is not available for {self.name} runs")

    def discover_unlabeled(self, path: str, d: Any, progress: Any = None
                           ) -> tuple[list[str], list[dict[str, str]]]:
        """The inputs of an unlabeled pool (semi-supervised training) and the skipped ones."""
        raise GraftError(f"{self.name} runs take no unlabeled pool yet")

    # FixMatch's two views of an unlabeled input: augmentation presets of ``make_dataset``
    weak_view, strong_view = "light", "strong"

    def expand_inputs(self, inputs: Sequence[str], text_column: str = "text") -> list[str]:
        """Command-line inputs to predict: files as given, folders replaced by their inputs
        (a text run: texts, and the texts of the .txt/.csv files named; ``text_column`` is the
        CSV column)."""
        return list(inputs)

    # --- model --------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        """A ConfigError when ``name`` is no model of this modality."""

    combines = False  # one head on several backbones (``model.name: a+b``)

    def auto_candidates(self) -> list[str]:
        """The built-in backbones ``model.name: auto`` scores, in the order it tries them."""
        return []

    def model_origin(self, name: str) -> list[str]:
        """Where the pretrained weights of each built-in backbone in ``name`` come from and what
        they were trained for (the model card's words); nothing for hub or local models."""
        return []

    def arch(self, name: str) -> str:
        return name

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool,
                     load_backbone: bool = True) -> tuple[Any, dict[str, Any]]:
        """A new adapter for ``spec`` (and what the data report should add about it).
        ``resuming``: rebuilt for a stopped run (its saved preprocessing). ``load_backbone``:
        whether the backbone's pretrained (or given) weights are loaded (False: a resumed run
        whose state holds them; the state of a run that trained only its head leaves them out)."""
        raise NotImplementedError

    def rebuild(self, path: Path, meta: dict[str, Any]) -> Any:
        """The adapter of a run directory, weights not yet loaded."""
        raise NotImplementedError

    def eval_batch(self, d: Any, device: Any) -> int:
        """The batch size of gradient-free passes (feature extraction, validation, predict)."""
        return d.eval_batch_size or 2 * d.batch_size

    def model_view(self, model: Any) -> Callable[[Any], Any]:
        """Per decoded input, what the model's batch is stacked from (the server's prepare)."""
        return lambda x: x

    def batch(self, model: Any, prepared: list[Any]) -> Any:
        """A model input from prepared inputs (``model_view``)."""
        raise NotImplementedError

    def tta_views(self, n: int, model: Any, cfg: Any) -> list[Any]:
        """``n`` test-time views of a model batch (:mod:`graftkit.data.tta`; the first is the
        batch itself) for the run's model and config; a ConfigError when it has fewer."""
        from ..data.tta import first, identity

        return first([("identity", identity)], n, f"{self.name} runs")

    # --- inputs -------------------------------------------------------------------------------
    def load(self, item: Any) -> tuple[str, Any]:
        """(name, decoded) of one input to predict: a path, or an already decoded object."""
        raise NotImplementedError

    def decode_upload(self, raw: bytes | str, max_pixels: int) -> Any:
        """One input of a served request, decoded; raises :class:`graftkit.errors.BadInput` with
        a reason and a code (the server answers 400, or 413 for ``too_many_pixels``)."""
        raise NotImplementedError

    def upload_cost(self, raw: bytes | str, max_pixels: int, model_side: int = 0) -> int:
        """What decoding and preprocessing this input of a served request will hold in memory,
        read from its header without decoding it (the server bounds the sum per request and
        what is decoded at once): pixels for an image, also once resized to ``model_side`` (the
        short side the preprocessing resizes to; 0: unknown). Raises :class:`BadInput` as
        ``decode_upload`` does for a header it cannot read or over ``max_pixels``. 0: too small
        to count (a text)."""
        return 0

    def decode_for_model(self, raw: bytes | str, max_pixels: int, model_side: int) -> Any:
        """``decode_upload`` for a model whose preprocessing keeps at most ``model_side`` pixels
        on an input's shorter side (0: unknown): a much larger input may be decoded at reduced
        scale, never below what the preprocessing needs."""
        return self.decode_upload(raw, max_pixels)

    def warmup_input(self, model_or_size: Any) -> Any:
        raise NotImplementedError

    def input_stats(self, decoded: Any) -> dict[str, float]:
        return {}

    def input_reference(self, items: Sequence[str]) -> dict[str, Any]:
        """Mean and std of ``input_stats`` over (a sample of) a split's inputs."""
        rows = [self.input_stats(x) for x in self._reference_inputs(items)]
        return {"n": len(rows), **{k: _moments(np.array([r[k] for r in rows]))
                                   for k in self.stat_keys}}

    def _reference_inputs(self, items: Sequence[str]) -> list[Any]:
        return list(items)

    # --- data audit (graft audit; graft train's quick check) ----------------------------------
    def content_key(self, item: str) -> str:
        """A digest of the input's content: two inputs with the same one are exact duplicates.
        (The input itself, hashed: right for a text; file modalities hash the file's bytes.)"""
        return hashlib.sha256(str(item).encode("utf-8", "surrogatepass")).hexdigest()

    def near_key(self, item: str) -> Any:
        """A key near-duplicates share or nearly share (``near_match`` compares two), e.g. a
        perceptual hash; None where the modality has none (backbone features alone decide)."""
        return None

    def near_match(self, a: Any, b: Any) -> bool:
        return a is not None and a == b

    def item_stats(self, item: str) -> dict[str, float]:
        """Cheap statistics of one input (sizes, lengths, durations): the audit lists their
        distribution and the odd ones out."""
        return {}

    # --- consumers ----------------------------------------------------------------------------
    def robustness_names(self, spec: str | None) -> list[str]:
        raise GraftError(f"graft robustness has no perturbations for {self.name} runs yet")

    def robustness(self, model: Any, cal: Any, items: Items, names: list[str], sevs: list[int],
                   seed: int, batch_size: int, workers: int | None, progress: Any,
                   forward: Any = None) -> tuple[dict[str, Any], Any]:
        """(results, what to show) of the modality's perturbation family on labeled items;
        ``forward`` (a faster engine of the same frozen model) may replace ``model``'s call."""
        raise GraftError(f"graft robustness has no perturbations for {self.name} runs yet")

    def robustness_figures(self, shown: Any, names: list[str], sevs: list[int], out: Path,
                           seed: int) -> dict[str, Any]:
        """Write the examples figure(s) into ``out``; returns what results.json should add."""
        return {}

    def robust_subset(self) -> str:
        """The perturbations of ``graft search --objective robust`` (a small, fast set)."""
        raise GraftError(f"--objective robust has no perturbations for {self.name} runs")

    def corrupted_sets(self, model: Any, items: Items, task: str, seed: int) -> dict[str, Any]:
        """WiSE-FT's ``clean+corruption`` objective: the validation split under a few
        perturbations (one per family, severity 3), as datasets."""
        raise GraftError(f"the clean+corruption objective is not available for {self.name} runs")

    def explain_methods(self) -> list[str]:
        """The explanation methods ``graft explain`` offers for this modality."""
        return []

    def explain(self, run: Any, inputs: list[str | Path], texts: list[str], method: str | None,
                target: str | None, out_dir: Path, topk: int) -> list[dict[str, Any]]:
        raise GraftError(f"graft explain is not available for {self.name} runs yet")

    def gallery(self, examples: list[dict[str, Any]], model: Any, classes: list[str], cal: Any,
                out: Path) -> list[dict[str, Any]]:
        """The report's worst examples, with what to show of each (a thumbnail and an overlay,
        or the text)."""
        return [{**ex, "text": ex["item"]} for ex in examples]

    # --- export (graft export; exportable modalities implement all four) -----------------------
    def export_signature(self, model: Any) -> ExportSignature:
        """The module the exporters trace, its example input and its inputs' names and shapes."""
        raise GraftError(f"graft export does not take {self.name} models yet")

    def export_assets(self, model: Any, run_dir: Path, bundle_dir: Path) -> dict[str, Any]:
        """Copy into ``bundle_dir`` what the torch-free predictor needs to preprocess; returns
        bundle.json's ``preprocessing`` (its ``kind`` picks ``graftkit.export.light``'s
        preprocessor, ``recipe`` says it in words)."""
        raise GraftError(f"graft export does not take {self.name} models yet")

    def export_fallback(self, meta: dict[str, Any]) -> tuple[list[Any], str]:
        """Decoded inputs for the export's parity check when the run's data cannot be read here,
        and what they are ("random-noise images")."""
        raise GraftError(f"graft export does not take {self.name} models yet")

    def card_notes(self, pre: dict[str, Any]) -> dict[str, str]:
        """The model card's wording for a bundle's ``preprocessing``: ``backbone`` (the model
        family), ``input`` (what the model reads), ``cut`` (a sentence: what the preprocessing
        loses), ``shift`` (inputs unlike the training data), ``perturbations`` and ``degraded``
        (the robustness family; inputs it hurts), ``example`` (a Python list of inputs),
        ``libraries`` (what the torch-free predictor preprocesses with)."""
        raise GraftError(f"graft export does not take {self.name} models yet")


def file_digest(item: str) -> str:
    """The sha256 of a file's bytes (a file modality's ``content_key``)."""
    h = hashlib.sha256()
    try:
        with open(item, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        return f"unreadable: {e.strerror}: {item}"  # unique: never a duplicate of another
    return h.hexdigest()


def _moments(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x))} if len(x) else {
        "mean": 0.0, "std": 0.0}


MODALITIES: Registry[Modality] = Registry("modality")
