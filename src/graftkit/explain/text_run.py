"""Explaining a finished text run's decisions: texts in, HTML snippets and JSON records out.

    OUT/
      001-<first words>.html   the text with its words highlighted, prediction, faithfulness
      001-<first words>.json   top classes, token and word attributions, completeness, scores
      index.html               every snippet, with links

Texts come from ``--text`` options and from files: ``.txt`` (one text per line, blank lines
skipped) or ``.csv`` (the run's text column). Every input is read and checked before anything is
written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import run as rd
from ..data.text import texts_in_file
from ..errors import ConfigError, DataError
from ..evaluate.calibration import Calibration
from . import text_html
from .text import (
    TEXT_METHODS,
    completeness,
    encode_text,
    merge_words,
    text_faithfulness,
    token_attributions,
)

HINT = 'give texts with --text "..." (repeatable) or .txt / .csv files'


def check_text_method(method: str) -> None:
    if method not in TEXT_METHODS:
        raise ConfigError(f"method {method!r} does not explain text runs; use "
                          f"{' or '.join(TEXT_METHODS)}")


def _from_file(p: Path, text_column: Callable[[], str]) -> list[tuple[str, str]]:
    if p.suffix.lower() not in (".csv", ".txt"):
        raise DataError(f"{p}: not a .txt or .csv file; a text run explains texts: {HINT}")
    return texts_in_file(p, text_column() if p.suffix.lower() == ".csv" else "text")


def read_texts(inputs: list[str | Path], texts: list[str], text_column: Callable[[], str]
               ) -> list[tuple[str, str]]:
    """``(source, text)`` for every ``--text`` and every line/row of the input files;
    ``text_column()`` names the CSV column (asked only when a CSV is given)."""
    out: list[tuple[str, str]] = []
    for i, t in enumerate(texts, 1):
        if not t.strip():
            raise DataError(f"--text number {i} is empty: every text needs some words")
        out.append((f"--text {i}", t.strip()))
    for item in map(Path, inputs):
        if not item.exists():
            raise DataError(f"input {str(item)!r} does not exist; {HINT}")
        if item.is_dir():
            raise DataError(f"{item}: a folder; a text run explains texts: {HINT}")
        out += _from_file(item, text_column)
    if not out:
        raise DataError(f"no texts given: {HINT}")
    return out


def _stem(i: int, text: str) -> str:
    return f"{i:03d}-{rd.safe_name(' '.join(text.split()[:5]))[:40]}"


def explain_text(model: Any, cal: Calibration, classes: list[str], text: str, method: str,
                 target: int | None, topk: int = 3, replace: str = "mask"
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One text: its record (without file paths) and its words with attributions."""
    inputs, _, _ = encode_text(model, text)
    with torch.inference_mode():
        logits = model(inputs).float()
    probs = cal.probs(logits)[0]
    predicted = int(cal.decide(probs[None].numpy())[0])
    t = predicted if target is None else target
    a = token_attributions(model, text, t)
    words = merge_words(a, text)
    p, idx = probs.topk(min(topk, len(classes)))
    n_tokens = len(model.tokenizer(text, truncation=False, verbose=False)["input_ids"])
    record = {
        "text": text, "method": method, "predicted": classes[predicted],
        "prob": float(probs[predicted]), "target": classes[t], "target_prob": float(probs[t]),
        "top": [{"label": classes[int(i)], "prob": float(v)} for v, i in zip(p, idx)],
        "words": [{k: w[k] for k in ("word", "start", "end", "attribution")} for w in words],
        "tokens": [{"token": tok, "attribution": float(s)}
                   for tok, s in zip(a.tokens, a.scores)],
        "truncated": n_tokens > len(a.tokens), "completeness": completeness(a),
        "faithfulness": text_faithfulness(model, a, replace),
    }
    return record, words


def explain_text_run(run: Any, inputs: list[str | Path], texts: list[str], method: str,
                     target: str | None, *, out_dir: str | Path, topk: int = 3
                     ) -> list[dict[str, Any]]:
    """Explain a text run's decision on each text (see the module docstring for the files).
    ``run`` is a :class:`graftkit.api.Run`. Returns the records written."""
    check_text_method(method)
    classes = run.classes
    if target is not None and target not in classes:
        raise ConfigError(f"unknown class {target!r}; this run's classes: {', '.join(classes)}")
    items = read_texts(inputs, texts, lambda: run.config.data.text_column)
    model, cal = run.model, Calibration.from_meta(run.meta)
    out, stems = Path(out_dir), [_stem(i, text) for i, (_, text) in enumerate(items, 1)]
    rd.claim_outputs(out, ["index.html", *(f"{st}.{ext}" for st in stems
                                           for ext in ("html", "json"))])
    records, entries = [], []
    for (source, text), stem in zip(items, stems):
        record, words = explain_text(model, cal, classes, text, method,
                                     None if target is None else classes.index(target), topk)
        record = {"input": source, **record,
                  "html": str(out / f"{stem}.html"), "json": str(out / f"{stem}.json")}
        html = text_html.snippet(record, text, words)
        (out / f"{stem}.html").write_text(text_html.page(f"{run.path.name}: {source}", html),
                                          encoding="utf-8")
        rd.write_json(out / f"{stem}.json", record)
        records.append(record)
        entries.append((record, html))
    (out / "index.html").write_text(
        text_html.index(f"{run.path.name}: {method} of {len(records)} text(s)", entries),
        encoding="utf-8")
    return records
