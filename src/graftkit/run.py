"""The run directory: the one artifact everything downstream reads.

    RUN_DIR/
      config.yaml             the fully resolved config
      meta.json               labels, preprocessing, model, strategy, versions, data fingerprint
      model.safetensors       the best weights (backbone + head), written atomically
      metrics.json            final train/val/test metrics
      history.jsonl           one line per epoch
      data_report.json        counts per split/class, skipped files with reasons
      reference.json          the model on the val split: graft serve's drift baseline
      model_selection.json    --model auto: every candidate backbone's probe score and time
      text_model/             text runs: the encoder's config.json and the tokenizer files
      checkpoints/last.safetensors   resumable state (weights, optimizer, scheduler, counters)
      checkpoints/probe.safetensors, finetuned.safetensors   WiSE-FT's two ends (lp_ft)
      eval/<name>/                   metrics.json, plots (PNG) and report.html of one split;
                                     written at the end of training and by `graft evaluate`
      robustness/results.json        graft robustness (and its figures)

Every one of these names is defined here, once.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import GraftError

CONFIG, META, WEIGHTS, METRICS, HISTORY, DATA_REPORT = (
    "config.yaml", "meta.json", "model.safetensors", "metrics.json", "history.jsonl",
    "data_report.json",
)
STATE = "checkpoints/last.safetensors"
PROBE, FINETUNED = "checkpoints/probe.safetensors", "checkpoints/finetuned.safetensors"
REFERENCE, TEXT_ASSETS, EVAL, REPORT = "reference.json", "text_model", "eval", "report.html"
AUDIO_ASSETS = "audio_model"  # the encoder's config.json (audio runs)
ROBUSTNESS, ROBUSTNESS_RESULTS = "robustness", "results.json"  # robustness/results.json
# Everything a run writes at its top level; a folder holding only these is a graft run (perhaps
# one that failed before writing meta.json) and may be replaced with --overwrite.
MODEL_SELECTION = "model_selection.json"  # --model auto's ranking (graftkit.train.select)
SEMI, SEMI_ROUNDS = "semi.json", "semi"  # a semi-supervised run's rounds (train.semi)
OWN = {CONFIG, META, WEIGHTS, METRICS, HISTORY, DATA_REPORT, "checkpoints", EVAL, ROBUSTNESS,
       TEXT_ASSETS, AUDIO_ASSETS, REFERENCE, "tensorboard", MODEL_SELECTION, SEMI, SEMI_ROUNDS}


_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_mode(path: str | Path) -> None:
    """Give a mkstemp file (created 0600) the mode a plain open() would (0666 less the umask)."""
    os.chmod(path, 0o666 & ~_UMASK)


def finite(obj: Any) -> Any:
    """NaN/inf -> None throughout ``obj`` (an undefined metric, e.g. R² of one example), so what
    graft writes is strict JSON that any parser reads."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """``obj`` as the strict, indented JSON of the run's files and of ``--json`` outputs."""
    return json.dumps(finite(obj), indent=2, default=_json_default)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename), so readers never see half a file.

    On a full disk there may be no room for the temporary copy: then an existing file is
    rewritten in place (over its own blocks), so a run can still record that it failed."""
    text = to_json(obj) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        usual_mode(tmp)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno != errno.ENOSPC or not path.is_file():
            raise
        with path.open("r+") as f:
            f.write(text)
            f.truncate()


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    """A JSON file of a run (or cache); a damaged one is the user's one-line error."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GraftError(f"{path} is damaged (not valid JSON: {e}); restore it from a copy or "
                         "train the run again") from None


def versions() -> dict[str, str]:
    import timm
    import torch
    import torchvision

    from . import __version__

    return {"graftkit": __version__, "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
            "platform": platform.platform()}


def prepare_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty folder unless asked; never wipe a folder we did not make.
    (Training replaces a run only once the new one passed its checks: :func:`replace_dir`.)"""
    if check_out_dir(out, overwrite):
        for p in out.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def not_a_file(out: Path) -> None:
    """Every ``--out`` folder: a GraftError when a file stands where it would be."""
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {str(out)!r} is a file, not a folder")


def check_out_dir(out: Path, overwrite: bool, resumable: bool = True) -> bool:
    """Whether ``out`` holds a run that ``overwrite`` may replace (False: it is new or empty);
    a GraftError for a file, a non-empty folder without ``overwrite``, or a folder that is not a
    graft run directory. ``resumable``: the command can continue a run (``--resume``). Nothing
    is changed."""
    not_a_file(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise GraftError(
                f"--out {str(out)!r} is not empty; pass --overwrite to replace that run, "
                f"{'--resume to continue it, ' if resumable else ''}or choose another folder"
            )
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN)
        if foreign:
            raise GraftError(
                f"refusing to overwrite {str(out)!r}: it is not a graft run directory (it holds "
                f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
            )
        return True
    return False


def unique_stems(files: list[Path]) -> list[str]:
    """File stems for one output each, with ``-2``, ``-3``... where two inputs share one."""
    taken: set[str] = set()
    stems = []
    for f in files:
        stem, k = f.stem, 1
        while stem in taken:  # (a-2 may itself be an input's own stem)
            k += 1
            stem = f"{f.stem}-{k}"
        taken.add(stem)
        stems.append(stem)
    return stems


OUTPUTS = ".graft-outputs"  # the names graft wrote into a folder the user named (--out)


def claim_outputs(folder: Path, names: list[str]) -> None:
    """Before a command writes ``names`` into ``folder`` (``graft explain``, ``graft lr-find``):
    a GraftError, with nothing written, when one of them is already there and graft did not
    write it (the folder's :data:`OUTPUTS` list); else the folder is made and lists them. A
    command run again over its own outputs replaces them."""
    not_a_file(folder)
    listed = folder / OUTPUTS
    own = set(listed.read_text().splitlines()) if listed.is_file() else set()  # (spaces too)
    clash = [n for n in names if (folder / n).exists() and n not in own]
    if clash:
        raise GraftError(f"--out {str(folder)!r} already holds {clash[0]!r}"
                         f"{f' (and {len(clash) - 1} more)' if len(clash) > 1 else ''}, which "
                         "graft did not write; choose another folder (nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    listed.write_text("\n".join(sorted(own | set(names))) + "\n")


def adopt_outputs(folder: Path) -> None:
    """List every file of ``folder`` as graft's own (:func:`claim_outputs`), unless it already
    has a list: a folder graft owns by its place, written before graft kept the list."""
    listed = folder / OUTPUTS
    if folder.is_dir() and not listed.is_file():
        listed.write_text("".join(f"{p.name}\n" for p in sorted(folder.iterdir())))


def sibling(out: Path, tag: str) -> Path:
    """A new hidden folder next to ``out`` (``.<name>.<tag>-<random>``), on the same disk."""
    import secrets

    out = out.absolute()  # "--out ." has no name of its own: its parent is the real one
    p = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
    p.mkdir(parents=True)
    return p


def replace_dir(old: Path, new: Path) -> None:
    """Put folder ``new`` where ``old`` is (two renames on one disk), then delete the old one."""
    old = old.absolute()
    trash = old.parent / f".{old.name}.old-{os.getpid()}"
    os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def default_out(model: str, strategy: str) -> Path:
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{model}-{strategy}"


def safe_name(text: str) -> str:
    # no leading dot either: ".." (or ".hidden") must not name a folder outside or hidden
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "data"


def eval_dir(run: Path, data: str | Path, split: str, name: str | None = None) -> Path:
    """``RUN_DIR/eval/<name>``; the default name is ``<data folder>-<split>`` (a CSV file:
    ``<its folder>-<its stem>-<split>``), the same for the report written at the end of training
    and for ``graft evaluate``."""
    p = Path(data).resolve()
    base = f"{p.parent.name}-{p.stem}" if p.is_file() else p.name
    return run / EVAL / safe_name(name or f"{base}-{split}")


def truncate_history(path: Path, last_epoch: int) -> None:
    """Drop history lines after ``last_epoch`` (written before a kill, redone on resume), and a
    line torn by a kill in mid-write."""
    if not path.is_file():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln)["epoch"] <= last_epoch:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def check_run_dir(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise GraftError(f"{str(p)!r} is a file, not a run directory")
    if not p.is_dir():
        raise GraftError(f"run directory {str(p)!r} does not exist")
    if not (p / META).is_file():
        if (p / "bundle.json").is_file():  # export.light.BUNDLE_JSON
            raise GraftError(f"{str(p)!r} is an export bundle, not a run directory: serve it "
                             "with graft serve, or predict with graftkit.export.light."
                             "BundlePredictor")
        raise GraftError(f"{str(p)!r} is not a graft run directory (no {META})")
    return p
