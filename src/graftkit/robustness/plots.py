"""Figures for the corruption benchmark, as PNG files (matplotlib, Agg backend, imported lazily).

Each function takes results from :func:`graftkit.robustness.bench.run_corruptions` (or an image,
example perturbed texts or perturbed audio clips), writes one figure to ``path`` and returns the
path; :func:`text_examples_html` gives the text examples as an HTML table.
"""

from __future__ import annotations

import difflib
import html
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import signal

from .corruptions import corrupt_array


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def _label(name: str) -> str:
    return name.replace("_", " ")


def plot_accuracy_vs_severity(results: dict[str, Any], path: str | Path) -> Path:
    """Accuracy per corruption against severity, with the clean accuracy and the mean."""
    plt = _plt()
    sevs = [str(s) for s in results["severities"]]
    names = list(results["corruptions"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, 20))
    for i, name in enumerate(names):
        acc = [results["corruptions"][name]["severity"][s] for s in sevs]
        ax.plot([int(s) for s in sevs], acc, marker="o", ms=4, lw=1.3, color=colours[i % 20],
                label=_label(name))
    mean = [np.mean([results["corruptions"][n]["severity"][s] for n in names]) for s in sevs]
    ax.plot([int(s) for s in sevs], mean, color="black", lw=2.8, marker="s",
            label=f"mean (mCA {results['mca']:.3f})")
    ax.axhline(results["clean_accuracy"], color="black", ls="--", lw=1.2,
               label=f"clean ({results['clean_accuracy']:.3f})")
    what = "perturbation" if results.get("kind") == "perturbations" else "corruption"
    ax.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1.02),
           title=f"Accuracy under {what} (n={results['n']})")
    ax.set_xticks([int(s) for s in sevs])
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9, frameon=False)
    return _save(fig, path)


def plot_heatmap(results: dict[str, Any], path: str | Path) -> Path:
    """Corruption x severity grid of accuracies, annotated, with a per-corruption mean column."""
    plt = _plt()
    sevs = [str(s) for s in results["severities"]]
    names = list(results["corruptions"])
    m = np.array([[results["corruptions"][n]["severity"][s] for s in sevs]
                  + [results["corruptions"][n]["mean"]] for n in names])
    fig, ax = plt.subplots(figsize=(1.0 * (len(sevs) + 1) + 3.5, 0.42 * len(names) + 1.8))
    im = ax.imshow(m, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03, label="accuracy")
    ax.set_xticks(range(len(sevs) + 1), [*sevs, "mean"])
    ax.set_yticks(range(len(names)), [_label(n) for n in names])
    ax.set_xlabel("severity")
    ax.axvline(len(sevs) - 0.5, color="white", lw=3)
    for (r, c), v in np.ndenumerate(m):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=9,
                color="black" if 0.25 < v < 0.85 else "white")
    ax.set_title(f"Accuracy: clean {results['clean_accuracy']:.3f}, mCA {results['mca']:.3f}")
    return _save(fig, path)


def plot_examples(image: Image.Image, corruptions: list[str], severities: list[int],
                  path: str | Path, seed: int = 0) -> Path:
    """One row per corruption: the clean image, then the image at each severity. The panels are
    laid into one mosaic drawn once (90 subplots took 4.5 s of a benchmark run; this, under 1)."""
    plt = _plt()
    clean = np.asarray(image.convert("RGB"))
    h, w = clean.shape[:2]
    gap = max(2, w // 40)
    rows, cols = len(corruptions), len(severities) + 1
    mosaic = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for r, name in enumerate(corruptions):
        panels = [clean] + [corrupt_array(clean, name, s, seed) for s in severities]
        for c, panel in enumerate(panels):
            mosaic[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = panel
    inch = 2.0 / w  # each panel 2 inches wide, as subplots had it
    left, top = 1.4, 0.35  # inches for the row labels and the column titles
    fig_w, fig_h = mosaic.shape[1] * inch + left + 0.1, mosaic.shape[0] * inch + top + 0.1
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((left / fig_w, 0.1 / fig_h, 1 - (left + 0.1) / fig_w,
                       1 - (top + 0.2) / fig_h))
    ax.imshow(mosaic, interpolation="none")
    ax.set_axis_off()
    for c in range(cols):
        ax.text(c * (w + gap) + w / 2, -gap, "clean" if c == 0 else f"severity {severities[c - 1]}",
                ha="center", va="bottom", fontsize=10)
    for r, name in enumerate(corruptions):
        ax.text(-2 * gap, r * (h + gap) + h / 2, _label(name), ha="right", va="center",
                fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 3})  # (6: 2x the time, -10%)
    plt.close(fig)
    return path


def _log_spectrogram(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Power in dB, 25 ms windows every 10 ms (frequencies x frames)."""
    nperseg = min(int(0.025 * sample_rate), len(wave))
    _, _, power = signal.spectrogram(np.asarray(wave, dtype=np.float64), fs=sample_rate,
                                     nperseg=nperseg,
                                     noverlap=max(0, nperseg - int(0.01 * sample_rate)))
    return 10 * np.log10(power + 1e-12)


def plot_audio_examples(wave: np.ndarray, sample_rate: int, examples: dict[str, dict[str, Any]],
                        path: str | Path) -> Path:
    """One row per perturbation: the clean clip's log-spectrogram, then the clip at each
    severity (``examples`` from :func:`graftkit.robustness.audio_perturbations.examples`), on
    one colour scale: the clean clip's top 80 dB."""
    plt = _plt()
    clean = _log_spectrogram(wave, sample_rate)
    top = float(clean.max())
    sevs = list(next(iter(examples.values())))
    rows, cols = len(examples), len(sevs) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols + 0.6, 0.8 * rows + 0.6),
                             squeeze=False)
    extent = (0, len(wave) / sample_rate, 0, sample_rate / 2000)  # seconds, kHz
    cmap = plt.get_cmap("magma", 32)  # few colours and no interpolation: a small PNG
    for r, (name, by) in enumerate(examples.items()):
        panels = [clean] + [_log_spectrogram(by[s], sample_rate) for s in sevs]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(panel, origin="lower", aspect="auto", cmap=cmap, vmin=top - 80, vmax=top,
                      extent=extent, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if c == 0 else f"severity {sevs[c - 1]}", fontsize=8)
        axes[r][0].set_ylabel(_label(name).replace(" ", "\n"), fontsize=8)
    fig.suptitle(f"Log-spectrograms, 0-{sample_rate / 2000:g} kHz, "
                 f"{len(wave) / sample_rate:.2f} s", fontsize=9)
    return _save(fig, path)


TEXT_CHARS = 110  # characters of a perturbed text shown per line of the PNG table


def plot_text_examples(examples: list[dict[str, Any]], path: str | Path) -> Path:
    """The first example text, then one line per perturbation x severity (monospace)."""
    plt = _plt()
    ex = examples[0]
    lines = [("clean", ex["text"])] + [(f"{_label(name)} {sev}", t)
                                       for name, by in ex["perturbed"].items()
                                       for sev, t in by.items()]
    width = max(len(label) for label, _ in lines)
    fig, ax = plt.subplots(figsize=(12, 0.24 * len(lines) + 0.6))
    ax.axis("off")
    for i, (label, t) in enumerate(lines):
        shown = textwrap.shorten(" ".join(t.split()), TEXT_CHARS, placeholder=" ...")
        ax.text(0, 1 - (i + 0.5) / len(lines), f"{label:<{width}}  {shown}", family="monospace",
                fontsize=8.5, va="center", color="black" if i else "#1f4e99",
                fontweight="bold" if i == 0 else "normal", transform=ax.transAxes)
    ax.set_title("Example perturbed text", fontsize=10, loc="left")
    return _save(fig, path)


def _marked(clean: str, perturbed: str) -> str:
    """``perturbed``, HTML-escaped, with the words that differ from ``clean`` in <mark>."""
    a, b = clean.split(), perturbed.split()
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        words = " ".join(html.escape(w) for w in b[j1:j2])
        if words:
            out.append(words if op == "equal" else f"<mark>{words}</mark>")
    return " ".join(out)


def text_examples_table(examples: list[dict[str, Any]]) -> str:
    """An HTML ``<table>``: per example text, one row per perturbation, one column per
    severity; changed words marked."""
    rows = []
    for ex in examples:
        sevs = list(next(iter(ex["perturbed"].values())))
        rows.append(f'<tr><th>clean</th><td colspan="{len(sevs)}">{html.escape(ex["text"])}'
                    "</td></tr>")
        rows.append("<tr><th></th>" + "".join(f"<th>severity {s}</th>" for s in sevs) + "</tr>")
        for name, by in ex["perturbed"].items():
            rows.append(f"<tr><th>{html.escape(_label(name))}</th>" + "".join(
                f"<td>{_marked(ex['text'], t)}</td>" for t in by.values()) + "</tr>")
    return ('<table class="text-examples">\n' + "\n".join(rows) + "\n</table>")


def text_examples_html(examples: list[dict[str, Any]]) -> str:
    """A self-contained page with :func:`text_examples_table`."""
    style = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:0.9em;"
             "text-align:left}mark{background:#fde68a}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Perturbed '
            f"texts</title><style>{style}</style></head><body>\n<h1>Perturbed texts</h1>\n"
            f"{text_examples_table(examples)}\n</body></html>\n")
