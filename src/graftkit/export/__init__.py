"""``graft export``: a finished run as a portable bundle.

    BUNDLE_DIR/
      model.onnx | model.torchscript.pt | model.safetensors   the network (one format per bundle)
      bundle.json     format version, task, classes, preprocessing (with a plain-language recipe),
                      calibration, model, input/output names and shapes, the parity check,
                      versions, the source run, the files with their sha256
      MODEL_CARD.md   data, model, training, metrics, calibration, robustness, limitations
      reference.json  the model on the run's val split: graft serve's drift baseline (when the
                      run's data was available to export)
      text_model/     a text run's tokenizer.json (what the torch-free predictor tokenizes
                      with) and encoder config.json (what rebuilds a safetensors bundle)

What differs between images and texts (the traced inputs, the files and preprocessing a bundle
carries, the card's wording) comes from the run's modality. Importing this package is cheap and
never imports torch: :mod:`graftkit.export.light` (the torch-free ONNX predictor, one
preprocessor per kind of bundle) lives here too. The exporters load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EXPORTERS", "BundlePredictor", "cli_export", "export_run", "rebuild_from_bundle"]

if TYPE_CHECKING:
    from .bundle import cli_export, export_run
    from .formats import EXPORTERS, rebuild_from_bundle
    from .light import BundlePredictor

_WHERE = {"export_run": "bundle", "cli_export": "bundle", "EXPORTERS": "formats",
          "rebuild_from_bundle": "formats", "BundlePredictor": "light"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
