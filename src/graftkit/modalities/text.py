"""Texts: CSVs of labeled texts, Hugging Face encoders, the text perturbations, integrated
gradients over the embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import run as rd
from ..errors import BadInput, ConfigError, DataError
from .base import MODALITIES, Items, Modality

WARMUP_TEXT = "warm-up"


def text_stats(text: str) -> dict[str, float]:
    return {"chars": float(len(text)), "words": float(len(text.split()))}


class TextModality(Modality):
    name, noun = "text", "text"
    json_field, form_field, form_files = "texts", "text", False
    json_help = "texts to classify"
    stat_keys = ("chars", "words")

    @property
    def default_model(self) -> str:  # type: ignore[override]
        from ..models.text_builtin import DEFAULT_TEXT_MODEL

        return DEFAULT_TEXT_MODEL

    def detect(self, path: str | None, d: Any) -> bool:
        from ..data.text_sources import is_text_csv

        named = d.text_column != type(d).model_fields["text_column"].default
        return bool(path) and is_text_csv(path or "", d.text_column, d.path_column, named)

    def check_config(self, cfg: Any) -> None:
        if cfg.train.augment not in ("auto", "none"):
            raise ConfigError(f"config key 'train.augment': {cfg.train.augment!r} augments "
                              "images; text runs take none")
        if cfg.train.mixup or cfg.train.cutmix:
            raise ConfigError("config key 'train.mixup': MixUp/CutMix are for images")
        if cfg.train.wise_ft is not None and cfg.train.wise_ft_objective != "clean":
            raise ConfigError("config key 'train.wise_ft_objective': the corruption objective "
                              "is for images; text runs take clean")

    def discover(self, d: Any, task: str, progress: Any = None) -> Any:
        from ..data.text_sources import discover_text

        return discover_text(d.path or "", val=d.val, test=d.test, task=task,
                             text_column=d.text_column, label_column=d.label_column,
                             val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                             seed=d.split_seed)

    def eval_items(self, data: str | Path, meta: dict[str, Any], d: Any, split: str | None
                   ) -> tuple[Items, list[dict[str, str]], str]:
        """A labeled text CSV, with the run's label map (a split column is honoured with
        --split)."""
        from ..data.sources import SPLIT_ALIASES, label_target
        from ..data.text import read_text_csv

        rows, skipped = read_text_csv(data, d.text_column, d.label_column)
        if split:
            try:
                splits = [s for _, s in read_text_csv(data, d.text_column, "split")[0]]
            except DataError:
                raise DataError(f"CSV {str(data)!r} has no split column; drop --split") from None
            rows = [r for r, s in zip(rows, splits) if SPLIT_ALIASES.get(s.lower()) == split]
        index = {c: i for i, c in enumerate(meta["classes"])}
        items = [(text, label_target(label, index, meta["task"], str(data)))
                 for text, label in rows]
        return items, skipped, split or "all"

    # --- model --------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        from ..models.text import is_text_model

        if not is_text_model(name):
            raise ConfigError(f"config key 'model.name': {name!r} is not a text model; the data "
                              "is text (try all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2 or a local "
                              "Hugging Face model directory)")

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool
                     ) -> tuple[Any, dict[str, Any]]:
        """The text adapter, its max length chosen from the training texts unless set, its
        tokenizer/config saved in the run; and the token statistics of every split."""
        from ..data.text import text_stats as token_stats
        from ..data.text import token_lengths
        from ..models.text import (
            TextDataConfig,
            choose_max_length,
            create_text_model,
            save_text_assets,
        )

        model = create_text_model(m.name or "", n_out, pretrained=m.pretrained and not resuming,
                                  dropout=m.dropout, max_length=m.max_length, pooling=m.pooling)
        if resuming:  # the length the run started with
            saved = TextDataConfig.from_dict(rd.read_json(out / rd.META)["preprocessing"])
            model.set_max_length(saved.max_length)
        elif m.max_length is None:
            lengths = token_lengths([t for t, _ in spec.splits["train"]], model.tokenizer)
            model.set_max_length(choose_max_length(lengths, model.max_positions))
        if not resuming:
            save_text_assets(model, out)
        n = model.data_config.max_length
        stats = {split: token_stats([t for t, _ in items], model.tokenizer, n)
                 for split, items in spec.splits.items()}
        return model, {"text": {"max_length": n, "tokens": stats}}

    def rebuild(self, path: Path, meta: dict[str, Any]) -> Any:
        from ..models.text import TextDataConfig, rebuild_text_model

        return rebuild_text_model(meta["model"], meta["num_outputs"], meta["model"]["dropout"],
                                  TextDataConfig.from_dict(meta["preprocessing"]), path)

    def batch(self, model: Any, prepared: list[Any]) -> Any:
        return model.tokenize(prepared)

    # --- inputs -------------------------------------------------------------------------------
    def load(self, item: Any) -> tuple[str, Any]:
        text = str(item)
        if not text.strip():
            raise DataError("empty text: every input needs some words")
        return text, text

    def decode_upload(self, raw: bytes | str, max_pixels: int) -> Any:
        if not isinstance(raw, str):
            raise BadInput("this model takes texts, not files", "bad_request")
        if not raw.strip():
            raise BadInput("empty text: every input needs some words", "empty_text")
        return raw

    def warmup_input(self, size: int) -> Any:
        return WARMUP_TEXT

    def input_stats(self, decoded: Any) -> dict[str, float]:
        return text_stats(str(decoded))

    # --- data audit -----------------------------------------------------------------------------
    # content_key: the text itself, hashed (the default)
    def near_key(self, item: str) -> Any:
        """The text with case, accents, punctuation and spacing taken out: "Free entry!!" and
        "free  entry" are one message."""
        import unicodedata

        folded = unicodedata.normalize("NFKD", str(item)).casefold()
        kept = "".join(c if c.isalnum() else " " for c in folded if not unicodedata.combining(c))
        return " ".join(kept.split()) or None

    def item_stats(self, item: str) -> dict[str, float]:
        return text_stats(str(item))

    # --- consumers ----------------------------------------------------------------------------
    def robustness_names(self, spec: str | None) -> list[str]:
        from ..robustness.perturbations import resolve_perturbations

        return resolve_perturbations(spec or "all")

    def robust_subset(self) -> str:
        return "all"

    def robustness(self, model: Any, cal: Any, items: Items, names: list[str], sevs: list[int],
                   seed: int, batch_size: int, workers: int | None, progress: Any
                   ) -> tuple[dict[str, Any], Any]:
        """Texts are perturbed as read, before tokenization."""
        import numpy as np

        from ..robustness.text_bench import examples, run_perturbations

        texts = [t for t, _ in items]
        targets = np.array([int(t) for _, t in items])

        @torch.no_grad()
        def predict_probs(batch: list[str]) -> np.ndarray:
            return cal.probs(model(model.tokenize(batch)).float()).numpy()

        results = run_perturbations(predict_probs, texts, targets, names, sevs, seed=seed,
                                    batch_size=batch_size, progress=progress)
        return results, examples(texts, names, sevs, seed)

    def robustness_figures(self, shown: Any, names: list[str], sevs: list[int], out: Path,
                           seed: int) -> dict[str, Any]:
        from ..robustness import plots

        plots.plot_text_examples(shown, out / "examples.png")
        (out / "examples.html").write_text(plots.text_examples_html(shown), encoding="utf-8")
        # the report shows the examples as a table rather than their PNG
        return {"examples": shown, "examples_table": plots.text_examples_table(shown)}

    def explain_methods(self) -> list[str]:
        from ..explain.text import TEXT_METHODS

        return list(TEXT_METHODS)

    def explain(self, run: Any, inputs: list[str | Path], texts: list[str], method: str | None,
                target: str | None, out_dir: Path, topk: int) -> list[dict[str, Any]]:
        from ..explain.text import TEXT_METHODS
        from ..explain.text_run import explain_text_run

        return explain_text_run(run, inputs, list(texts or []), method or TEXT_METHODS[0],
                                target, out_dir=out_dir, topk=topk)


MODALITIES.register("text", "labeled texts: a CSV of text,label rows")(TextModality())

__all__ = ["TextModality", "text_stats"]
