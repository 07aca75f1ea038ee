"""Texts: CSVs of labeled texts, Hugging Face encoders, the text perturbations, integrated
gradients over the embeddings, ONNX export on token tensors."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import run as rd
from ..errors import BadInput, ConfigError, DataError, GraftError
from .base import MODALITIES, ExportSignature, Items, Modality

WARMUP_TEXT = "warm-up"
# The exported graph's inputs, in this order (token_type_ids when the tokenizer makes them).
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Traced as a batch of 2 of unequal lengths: torch.export specialises a dimension whose example
# size is 1, and the padding is part of what is traced.
EXAMPLE_TEXTS = ("An example text to trace the model with.",
                 "A second example, a little longer than the first one, so that it is padded.")
# The export's parity check when the run's texts cannot be read here.
SAMPLE_TEXTS = ("See you at lunch tomorrow?", "WINNER!! Claim your free prize now, call 0800 123",
                "The meeting moved to Thursday at 10am, room 4.", "ok",
                "I did not like the film at all; the plot made no sense and it was far too long.",
                "What is the capital of Australia?", "Café au lait, s'il vous plaît. Merci !",
                "Your parcel is waiting: confirm your address at http://example.com/track " * 4)


def text_stats(text: str) -> dict[str, float]:
    return {"chars": float(len(text)), "words": float(len(text.split()))}


class TextModality(Modality):
    name, noun = "text", "text"
    exportable = True
    # MiniLM-L6 on 2 threads: 400 texts/s in torch (shortest first), 470 in ONNX Runtime, 3 s to
    # export: the export repays itself from about 8,000 texts (benchmarks/feature_engine.py)
    engine_min_inputs = 8000
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

    def discover_unlabeled(self, path: str, d: Any, progress: Any = None
                           ) -> tuple[list[str], list[dict[str, str]]]:
        from ..data.text_sources import discover_text_pool

        return discover_text_pool(path, d.text_column)

    # FixMatch: the text itself / a token-level perturbation (words dropped and swapped)
    weak_view, strong_view = "none", "strong"

    def eval_items(self, data: str | Path, meta: dict[str, Any], d: Any, split: str | None
                   ) -> tuple[Items, list[dict[str, str]], str]:
        """A labeled text CSV, with the run's label map (a split column is honoured with
        --split)."""
        from ..data.sources import SPLIT_ALIASES, label_target
        from ..data.text import read_text_split_csv

        rows, skipped = read_text_split_csv(data, d.text_column, d.label_column)
        if split:
            if not any(s for _, _, s in rows):
                raise DataError(f"CSV {str(data)!r} has no split column; drop --split")
            rows = [r for r in rows if SPLIT_ALIASES.get(r[2].lower()) == split]
        index = {c: i for i, c in enumerate(meta["classes"])}
        items = [(text, label_target(label, index, meta["task"], str(data)))
                 for text, label, _ in rows]
        return items, skipped, split or "all"

    # --- model --------------------------------------------------------------------------------
    def auto_candidates(self) -> list[str]:
        from ..models.text_builtin import AUTO_ORDER

        return list(AUTO_ORDER)

    def model_origin(self, name: str) -> list[str]:
        from ..models.text import TEXT_MODELS

        return [f"`{name}`: {TEXT_MODELS.help(name)}"] if name in TEXT_MODELS else []

    def check_model(self, name: str) -> None:
        from ..models.text import is_text_model

        if not is_text_model(name):
            raise ConfigError(f"config key 'model.name': {name!r} is not a text model; the data "
                              "is text (try all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2 or a local "
                              "Hugging Face model directory)")

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool,
                     load_backbone: bool = True) -> tuple[Any, dict[str, Any]]:
        """The text adapter, its max length chosen from the training texts (and any unlabeled
        ones) unless set, its
        tokenizer/config saved in the run; and the token statistics of every split."""
        from ..data.text import text_stats as token_stats
        from ..data.text import token_lengths
        from ..models.text import (
            TextDataConfig,
            choose_max_length,
            create_text_model,
            save_text_assets,
        )

        model = create_text_model(m.name or "", n_out, pretrained=m.pretrained and load_backbone,
                                  dropout=m.dropout, max_length=m.max_length, pooling=m.pooling)
        if resuming:  # the length the run started with
            saved = TextDataConfig.from_dict(rd.read_json(out / rd.META)["preprocessing"])
            model.set_max_length(saved.max_length)
        elif m.max_length is None:
            lengths = token_lengths([t for t, _ in spec.splits["train"]] + spec.unlabeled,
                                    model.tokenizer)
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
    def expand_inputs(self, inputs: Sequence[str], text_column: str = "text") -> list[str]:
        """Each argument is a text, except the name of an existing .txt file (its lines) or
        .csv file (its ``text_column``): ``graft predict RUN messages.csv`` reads the file."""
        from ..data.text import texts_in_file

        out: list[str] = []
        for item in inputs:
            p = Path(item)
            if p.suffix.lower() in (".txt", ".csv") and p.is_file():
                out += [t for _, t in texts_in_file(p, text_column)]
            else:
                out.append(str(item))
        return out

    def load(self, item: Any) -> tuple[str, Any]:
        if not isinstance(item, str):  # str(None) or str(Path) would be classified as a text
            raise DataError(f"{type(item).__name__} {item!r}: a text run predicts texts (str); "
                            "read a file of texts first")
        text = item
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
                   seed: int, batch_size: int, workers: int | None, progress: Any,
                   forward: Any = None) -> tuple[dict[str, Any], Any]:  # (torch runs it)
        """Texts are perturbed as read, before tokenization."""
        import numpy as np

        from ..robustness.text_bench import examples, run_perturbations

        texts = [t for t, _ in items]
        targets = np.array([int(t) for _, t in items])

        @torch.no_grad()
        def predict_probs(batch: list[str]) -> np.ndarray:
            return cal.probs(model(model.tokenize(batch)).float()).numpy()

        results = run_perturbations(predict_probs, texts, targets, names, sevs, seed=seed,
                                    batch_size=batch_size, progress=progress, decide=cal.decide)
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

    # --- export -------------------------------------------------------------------------------
    def export_signature(self, model: Any) -> ExportSignature:
        """The adapter on its token tensors, each (batch, sequence) int64 with both axes
        dynamic."""
        names = _input_names(model)
        enc = model.tokenize(list(EXAMPLE_TEXTS))
        what = {"input_ids": "token ids: preprocessing.tokenizer_file, truncated at "
                "preprocessing.max_length, padded to the batch's longest with pad_id",
                "attention_mask": "1 for a token, 0 for padding",
                "token_type_ids": "pad_type_id for every token (one text per input)"}
        inputs = [{"name": n, "shape": ["batch", "sequence"], "dtype": "int64",
                   "description": what[n]} for n in names]
        return ExportSignature(TokenInputs(model).eval(), tuple(enc[n] for n in names), inputs,
                               lambda batch: tuple(batch[n] for n in names))

    def export_assets(self, model: Any, run_dir: Path, bundle_dir: Path) -> dict[str, Any]:
        """The run's ``text_model/`` (tokenizer.json for the torch-free predictor; the encoder's
        config.json rebuilds a safetensors bundle), and how the tokenizer is called."""
        src = Path(run_dir) / rd.TEXT_ASSETS
        if not (src / "tokenizer.json").is_file():
            raise GraftError(f"run {str(run_dir)!r} has no {rd.TEXT_ASSETS}/tokenizer.json (not a "
                             "fast tokenizer): the bundle's torch-free predictor needs one")
        shutil.copytree(src, Path(bundle_dir) / rd.TEXT_ASSETS)
        tok = model.tokenizer
        pre = {**model.data_config.to_dict(), "tokenizer_file": f"{rd.TEXT_ASSETS}/tokenizer.json",
               "input_names": _input_names(model), "pad_token": tok.pad_token,
               "pad_id": tok.pad_token_id, "pad_type_id": tok.pad_token_type_id,
               "padding_side": tok.padding_side, "truncation_side": tok.truncation_side}
        return {**pre, "recipe": _recipe(pre)}

    def export_fallback(self, meta: dict[str, Any]) -> tuple[list[Any], str]:
        return list(SAMPLE_TEXTS), "sample sentences"

    def card_notes(self, pre: dict[str, Any]) -> dict[str, str]:
        n = pre["max_length"]
        kept = "beginning" if pre["truncation_side"] == "right" else "end"
        return {
            "backbone": "Hugging Face encoder",
            "input": f"up to {n} tokens ({', '.join(pre['input_names'])})",
            "cut": f"Texts are cut after {n} tokens (special tokens included): words beyond that "
                   f"do not count, so a long text is judged on its {kept}.",
            "shift": "texts from other sources, writers, topics, styles or languages",
            "perturbations": "text perturbations (typos, casing, punctuation, spacing, word "
                             "order)",
            "degraded": "texts with typos or unusual casing, punctuation or spacing",
            "example": '["first text to classify", "another text"]',
            "libraries": "tokenizers",
        }


class TokenInputs(torch.nn.Module):
    """A text adapter on its token tensors as positional arguments: what the exporters trace
    (the adapter itself takes one dict)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            x["token_type_ids"] = token_type_ids
        return self.model(x)  # (B, K)


def _input_names(model: Any) -> list[str]:
    made = model.tokenizer.model_input_names
    return [n for n in TEXT_INPUTS if n in made or n == "attention_mask"]  # pooling needs the mask


def _recipe(pre: dict[str, Any]) -> str:
    """The tokenization in words (bundle.json), as graftkit.export.light does it."""
    types = (f"; token_type_ids {pre['pad_type_id']} everywhere"
             if "token_type_ids" in pre["input_names"] else "")
    pooled = ("the mean of the encoder's outputs over the attention mask"
              if pre["pooling"] == "mean" else "the encoder's output at the first token")
    return (f"Tokenize each text with the tokenizers library, Tokenizer.from_file("
            f"'{pre['tokenizer_file']}'), special tokens added as its post-processor says. "
            f"Truncate to {pre['max_length']} tokens (cutting on the {pre['truncation_side']}). "
            f"Pad every text of a batch to the batch's longest on the {pre['padding_side']} with "
            f"{pre['pad_token']} (id {pre['pad_id']}). Feed {', '.join(pre['input_names'])} as "
            f"int64 (batch, sequence): attention_mask 1 for a token, 0 for padding{types}. The "
            f"graph pools {pooled} and applies the head.")


MODALITIES.register("text", "labeled texts: a CSV of text,label rows")(TextModality())

__all__ = ["TextModality", "TokenInputs", "text_stats"]
