"""The bad-input corpus: what a hostile or careless user types, and what graft must answer.

Every case below runs the real ``graft`` entry point (``graftkit.cli.main.main``, in this process
so the corpus stays fast) against a small workspace of real files and a finished run, and
asserts: exit code 2, exactly one ``error: ...`` line and it is the last line on stderr, no
traceback, the line names the problem, and not one byte of the user's files changed or went
missing. HTTP mistakes have their own corpus in ``tests/unit/test_serve_app.py`` (bad uploads,
JSON, multipart, sizes, auth, timeouts, overload); the fault tests (disk full, ``--overwrite``
with bad data) are in ``test_resume_demo_api.py`` and ``test_cli_errors.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import traceback
from pathlib import Path

import pytest

from tests.conftest import shared_dataset

pytestmark = pytest.mark.integration

TINY = ["--model", "test_efficientnet", "model.pretrained=false", "model.image_size=64"]


def run_graft(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """``graft ARGS`` in this process: (exit code, stdout, stderr); an exception that escapes
    ``main`` is a failure of the test, with its traceback."""
    from graftkit.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = ["graft", *map(str, args)]
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the test's failure
        pytest.fail(f"graft {' '.join(map(str, args))} raised:\n{traceback.format_exc()}")
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    return code, out.getvalue(), err.getvalue()


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under ``roots`` -> its SHA-256 (symlinks: their target)."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "folder"
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, probe_run: Path) -> Path:
    """A user's workspace: image folders (good and broken), CSVs, configs, a finished run."""
    root = tmp_path_factory.mktemp("ws")
    src = shared_dataset("hymenoptera_256") / "train"
    for cls in ("ants", "bees"):
        (root / "imgs" / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpg"))[:6]:
            shutil.copy(f, root / "imgs" / cls / f.name)
    jpg = next((root / "imgs" / "ants").glob("*.jpg"))
    (root / "img.jpg").write_bytes(jpg.read_bytes())
    (root / "corrupt.jpg").write_bytes(jpg.read_bytes()[:200])
    (root / "notes.txt").write_text("not an image\n")
    (root / "empty").mkdir()
    (root / "one" / "ants").mkdir(parents=True)
    shutil.copy(jpg, root / "one" / "ants" / "a.jpg")
    for name, dirs in {"twoval": ["train", "val", "valid"], "cased": ["train", "Train", "val"]
                       }.items():
        for d in dirs:
            for cls in ("ants", "bees"):
                (root / name / d / cls).mkdir(parents=True)
                shutil.copy(jpg, root / name / d / cls / "a.jpg")
    (root / "brokenclass" / "ants").mkdir(parents=True)
    shutil.copy(jpg, root / "brokenclass" / "ants" / "a.jpg")
    (root / "brokenclass" / "bees").mkdir()
    (root / "brokenclass" / "bees" / "b.jpg").write_bytes(b"\xff\xd8 not really")
    rel = [f"imgs/{c}/{p.name}" for c in ("ants", "bees")
           for p in sorted((root / "imgs" / c).glob("*.jpg"))]
    (root / "nopath.csv").write_text("file,label\n" + "".join(f"{r},x\n" for r in rel))
    (root / "nolabel.csv").write_text("path,class\n" + "".join(f"{r},x\n" for r in rel))
    (root / "missing.csv").write_text("path,label\nnope/a.jpg,ants\nnope/b.jpg,bees\n")
    (root / "header.csv").write_text("path,label\n")
    (root / "badsplit.csv").write_text("path,label,split\n" + "".join(
        f"{r},{r.split('/')[1]},holdout\n" for r in rel))
    texts = [f"{w} movie number {i}" for i in range(8) for w in ("great", "awful")]
    (root / "texts.csv").write_text("text,label\n" + "".join(
        f"{t},{'pos' if t.startswith('great') else 'neg'}\n" for t in texts))
    (root / "latin1.csv").write_bytes(b"text,label\n" + "".join(
        f"caf\xe9 cr\xe8me {i},{i % 2}\n" for i in range(10)).encode("latin-1"))
    (root / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "syntax.yaml").write_text("optim: {lr: [1,\n")
    (root / "unknown.yaml").write_text("optim:\n  lrr: 0.1\n")
    (root / "space.yaml").write_text("lr: {type: float, low: 1, high: 0}\n")
    for name, text in {"badkey": "optim.lrr: {low: 1.0e-4, high: 1.0e-2}\n",
                       "lowhigh": "optim.lr: {low: 1.0e-2, high: 1.0e-4, log: true}\n",
                       "lora": "strategy.name: {choices: [linear_probe, lora]}\n",
                       "yaml": "optim.lr: [\n"}.items():
        (root / f"space_{name}.yaml").write_text(text)
    (root / "full").mkdir()
    (root / "full" / "precious.txt").write_text("mine")
    (root / "a_file").write_text("I am a file")
    run = root / "run"
    shutil.copytree(probe_run, run)
    for name in ("dmg_meta", "dmg_weights", "dmg_classes"):  # a run, damaged or hand-edited
        shutil.copytree(probe_run, root / name)
    (root / "dmg_meta" / "meta.json").write_text("{bad json")
    weights = root / "dmg_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    meta = json.loads((root / "dmg_classes" / "meta.json").read_text())
    (root / "dmg_classes" / "meta.json").write_text(json.dumps({**meta, "classes": ["ants"]}))
    (root / "mine").mkdir()  # a user's folder that holds files named as graft's outputs
    for name in ("img.json", "lr_find.json"):
        (root / "mine" / name).write_text("my own notes")
    (root / "notes.md").write_text("my own notes")
    (root / "bundle").mkdir()  # what graft export writes, as far as predict looks
    (root / "bundle" / "bundle.json").write_text('{"format": "graftkit-bundle"}')
    return root


def _corpus() -> list[tuple[str, list[str], str]]:
    """(id, argv with {ws} for the workspace, a phrase the error line must contain)."""
    D, R = "{ws}/imgs", "{ws}/run"
    return [
        # --- the command line itself ------------------------------------------------------
        ("epochs not a number", ["train", "--data", D, "--epochs", "abc"], "'--epochs'"),
        ("unknown option", ["train", "--bogus"], "--bogus"),
        ("predict without args", ["predict"], "Missing argument"),
        ("unknown command", ["nosuchcmd"], "No such command"),
        ("port not a number", ["serve", R, "--port", "abc"], "'--port'"),
        ("topk 0", ["predict", R, "{ws}/img.jpg", "--topk", "0"], "--topk"),
        ("threads 0", ["--threads", "0", "predict", R, "{ws}/img.jpg"], "--threads"),
        ("evaluate without args", ["evaluate"], "Missing argument"),
        ("train without data", ["train"], "no data given"),
        # --- config: overrides and files --------------------------------------------------
        ("lr inf", ["train", "--data", D, *TINY, "optim.lr=inf"], "optim.lr"),
        ("lr nan", ["train", "--data", D, *TINY, "optim.lr=nan"], "optim.lr"),
        ("lr negative", ["train", "--data", D, *TINY, "optim.lr=-1"], "optim.lr"),
        ("unknown key", ["train", "--data", D, *TINY, "optim.lrr=3"], "'optim.lrr': unknown key"),
        ("epochs negative", ["train", "--data", D, *TINY, "train.epochs=-1"], "train.epochs"),
        ("override without =", ["train", "--data", D, "optim.lr"], "key=value"),
        ("section set to a value", ["train", "--data", D, "optim=3"], "optim"),
        ("config missing", ["train", "--data", D, "-c", "{ws}/nope.yaml"], "nope.yaml"),
        ("config binary", ["train", "--data", D, "-c", "{ws}/binary.yaml"], "binary.yaml"),
        ("config a list", ["train", "--data", D, "-c", "{ws}/list.yaml"], "list.yaml"),
        ("config bad yaml", ["train", "--data", D, "-c", "{ws}/syntax.yaml"], "syntax.yaml"),
        ("config unknown key", ["train", "--data", D, "-c", "{ws}/unknown.yaml"], "optim.lrr"),
        ("class weights length", ["train", "--data", D, *TINY, "loss.class_weights=[1,2,3]"],
         "3 weights for 2 classes"),
        ("wise_ft with a probe", ["train", "--data", D, *TINY, "train.wise_ft=auto"],
         "use --strategy lp_ft"),
        ("wise_ft alpha 2", ["train", "--data", D, *TINY, "train.wise_ft=2"], "wise_ft"),
        ("threshold needs target", ["train", "--data", D, *TINY,
                                    "calibration.threshold=precision"], "calibration.target"),
        ("unknown strategy", ["train", "--data", D, "--strategy", "magic"], "unknown strategy"),
        ("unknown model", ["train", "--data", D, "--model", "resnet9000"], "resnet9000"),
        ("unknown optimizer", ["train", "--data", D, *TINY, "optim.name=adamx"], "adamx"),
        ("unknown schedule", ["train", "--data", D, *TINY, "optim.schedule=zigzag"], "zigzag"),
        ("unknown augment", ["train", "--data", D, *TINY, "train.augment=wild"], "wild"),
        ("regression loss", ["train", "--data", D, *TINY, "loss.name=mse"], "does not fit"),
        ("unknown modality", ["train", "--data", D, *TINY, "data.modality=smell"], "smell"),
        ("lora on images", ["train", "--data", D, *TINY, "--strategy", "lora"], "lora"),
        ("weights missing", ["train", "--data", D, *TINY, "model.weights={ws}/w.safetensors"],
         "model.weights"),
        ("metric of regression", ["train", "--data", D, *TINY, "train.early_stop.metric=rmse"],
         "rmse"),
        ("device tpu", ["train", "--data", D, *TINY, "train.device=tpu"], "train.device"),
        ("val fraction 1.5", ["train", "--data", D, *TINY, "data.val_fraction=1.5"],
         "val_fraction"),
        # --- data ---------------------------------------------------------------------------
        ("data missing", ["train", "--data", "{ws}/nope"], "does not exist"),
        ("data empty folder", ["train", "--data", "{ws}/empty", *TINY], "empty"),
        ("one class", ["train", "--data", "{ws}/one", *TINY, "--out", "{ws}/never"],
         "only one class"),
        ("class of corrupt files", ["train", "--data", "{ws}/brokenclass", *TINY],
         "no usable images"),
        ("val and valid", ["train", "--data", "{ws}/twoval", *TINY], "'val' and 'valid'"),
        ("train and Train", ["train", "--data", "{ws}/cased", *TINY], "'Train' and 'train'"),
        ("csv without path", ["train", "--data", "{ws}/nopath.csv", *TINY], "--text-column"),
        ("csv without label", ["train", "--data", "{ws}/nolabel.csv", *TINY], "'label'"),
        ("csv of missing files", ["train", "--data", "{ws}/missing.csv", *TINY],
         "none of its 2 rows is a usable image"),
        ("csv header only", ["train", "--data", "{ws}/header.csv", *TINY], "no rows"),
        ("csv unknown split", ["train", "--data", "{ws}/badsplit.csv", *TINY], "holdout"),
        ("text csv latin-1", ["train", "--data", "{ws}/latin1.csv", "--model", "minilm"],
         "UTF-8"),
        ("text column wrong", ["train", "--data", "{ws}/texts.csv", "--text-column", "body"],
         "no column 'body'"),
        ("data a text file", ["train", "--data", "{ws}/notes.txt", *TINY], "notes.txt"),
        ("out is a file", ["train", "--data", D, *TINY, "--out", "{ws}/a_file"], "a_file"),
        ("out not empty", ["train", "--data", D, *TINY, "--out", "{ws}/full"], "not empty"),
        ("overwrite a non-run", ["train", "--data", D, *TINY, "--out", "{ws}/full",
                                 "--overwrite"], "not a graft run directory"),
        ("out over the run", ["train", "--data", D, *TINY, "--out", R], "not empty"),
        # --- commands that read a run ------------------------------------------------------
        ("predict a non-run", ["predict", "{ws}/imgs", "{ws}/img.jpg"], "not a graft run"),
        ("predict a missing file", ["predict", R, "{ws}/nope.jpg"], "nope.jpg"),
        ("predict a corrupt file", ["predict", R, "{ws}/corrupt.jpg"], "corrupt.jpg"),
        ("predict a text file", ["predict", R, "{ws}/notes.txt"], "notes.txt"),
        ("predict texts on images", ["predict", R, "{ws}/texts.csv"], "texts.csv"),
        ("evaluate missing data", ["evaluate", R, "--data", "{ws}/nope"], "does not exist"),
        ("evaluate other classes", ["evaluate", R, "--data", "{ws}/texts.csv"],
         "this run reads image files"),
        ("evaluate unknown split", ["evaluate", R, "--split", "holdout"], "holdout"),
        ("export unknown format", ["export", R, "--format", "pickle"], "pickle"),
        ("export a non-run", ["export", "{ws}/imgs"], "not a graft run"),
        ("robustness unknown corruption", ["robustness", R, "--corruptions", "lava"], "lava"),
        ("robustness severity 9", ["robustness", R, "--severities", "9"], "9"),
        ("explain unknown method", ["explain", R, "{ws}/img.jpg", "--method", "tarot"], "tarot"),
        ("resume a non-run", ["train", "--resume", "{ws}/imgs"], "imgs"),
        ("resume a finished run", ["train", "--resume", R], "already completed"),
        ("resume with options", ["train", "--resume", R, "--epochs", "3"], "drop the other"),
        ("calibrate a non-run", ["calibrate", "{ws}/empty"], "not a graft run"),
        ("run dir is a file", ["predict", "{ws}/a_file", "{ws}/img.jpg"], "is a file"),
        ("config a folder", ["train", "--data", D, "-c", "{ws}/empty"], "is a folder"),
        ("out inside data", ["train", "--data", D, *TINY, "--out", "{ws}/imgs/run1"],
         "inside the data folder"),
        ("text task on a folder", ["train", "--data", D, "--task", "text-classification"],
         "is a folder; a text run reads a CSV"),
        ("text model on images", ["train", "--data", D, "--model", "all-MiniLM-L6-v2"],
         "is a text model"),
        ("audit out a file", ["audit", D, "--out", "{ws}/a_file"], "is a file"),
        ("calibrate target 1.5", ["calibrate", R, "--threshold", "precision", "--target", "1.5"],
         "--target 1.5"),
        ("predict damaged meta", ["predict", "{ws}/dmg_meta", "{ws}/img.jpg"], "damaged"),
        ("predict damaged weights", ["predict", "{ws}/dmg_weights", "{ws}/img.jpg"], "damaged"),
        ("predict edited classes", ["predict", "{ws}/dmg_classes", "{ws}/img.jpg"],
         "lists 1 classes for a model of 2 outputs"),
        ("evaluate damaged weights", ["evaluate", "{ws}/dmg_weights"], "damaged"),
        ("export damaged meta", ["export", "{ws}/dmg_meta"], "damaged"),
        ("resume damaged meta", ["train", "--resume", "{ws}/dmg_meta"], "damaged"),
        ("serve damaged weights", ["serve", "{ws}/dmg_weights"], "damaged"),
        ("explain over a user's file", ["explain", R, "{ws}/img.jpg", "--out", "{ws}/mine"],
         "graft did not write"),
        ("lr-find over a user's file", ["lr-find", "--data", D, *TINY, "--out", "{ws}/mine"],
         "graft did not write"),
        ("compare a split none has", ["compare", R, "--split", "test"], "no run here was scored"),
        ("search out a file", ["search", "--data", D, "--out", "{ws}/a_file"], "is a file"),
        ("predict on a bundle", ["predict", "{ws}/bundle", "{ws}/img.jpg"], "export bundle"),
        ("compare over a file", ["compare", R, "--out", "{ws}/notes.md"], "--overwrite"),
        ("compare nothing", ["compare", "{ws}/empty"], "empty"),
        ("serve a non-run", ["serve", "{ws}/imgs"], "imgs"),
        ("serve max batch 0", ["serve", R, "--max-batch", "0"], "--max-batch"),
        # --- search -------------------------------------------------------------------------
        ("search bad space", ["search", "--data", D, "--space", "{ws}/space.yaml", "--out",
                              "{ws}/s1"], "space.yaml"),
        ("search space unknown key", ["search", "--data", D, "--space", "{ws}/space_badkey.yaml",
                                      "--out", "{ws}/s5", *TINY], "not a config key"),
        ("search space low > high", ["search", "--data", D, "--space",
                                     "{ws}/space_lowhigh.yaml", "--out", "{ws}/s6", *TINY],
         "low < high"),
        ("search space lora on images", ["search", "--data", D, "--space",
                                         "{ws}/space_lora.yaml", "--out", "{ws}/s7", *TINY],
         "lora"),
        ("search space bad yaml", ["search", "--data", D, "--space", "{ws}/space_yaml.yaml",
                                   "--out", "{ws}/s8", *TINY], "not valid YAML"),
        ("search missing space", ["search", "--data", D, "--space", "{ws}/nope.yaml", "--out",
                                  "{ws}/s2"], "nope.yaml"),
        ("search bad budget", ["search", "--data", D, "--time-budget", "soon", "--out",
                               "{ws}/s3"], "soon"),
        ("search resume nothing", ["search", "--resume", "{ws}/empty"], "not a search folder"),
        ("search unknown sampler", ["search", "--data", D, "--sampler", "psychic", "--out",
                                    "{ws}/s4"], "psychic"),
    ]


CORPUS = _corpus()


@pytest.mark.parametrize(("args", "says"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_a_mistake_is_one_line_exit_2_and_touches_nothing(ws: Path, args: list[str], says: str
                                                          ) -> None:
    argv = [a.replace("{ws}", str(ws)) for a in args]
    before = snapshot(ws)
    code, _, err = run_graft(argv, ws)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert "Traceback" not in err
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert says.replace("{ws}", str(ws)) in errors[0], errors[0]
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before, "a user file changed"
    assert not set(before) - set(after), "a user file went missing"
    assert not set(after) - set(before), "a mistake left something behind"


def test_the_corpus_is_large_enough() -> None:
    from tests.unit.test_serve_app import _bad_requests  # the HTTP half of the corpus

    assert len(CORPUS) + len(_bad_requests()) >= 60


def test_a_broken_symlink_a_loop_and_a_fifo_are_listed_not_fatal(ws: Path, tmp_path: Path
                                                                   ) -> None:
    data = tmp_path / "d"
    shutil.copytree(ws / "imgs", data)
    (data / "ants" / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (data / "bees" / "loop.jpg").symlink_to(data / "bees" / "loop.jpg")
    os.mkfifo(data / "bees" / "pipe.jpg")
    code, _, err = run_graft(["train", "--data", data, *TINY, "--epochs", "1", "--out",
                              tmp_path / "r", "-q", "train.threads=1"], tmp_path)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "data_report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {"dangling.jpg": "broken symlink", "loop.jpg": "symlink loop",
                       "pipe.jpg": "a FIFO"}
