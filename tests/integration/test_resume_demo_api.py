"""Resume reaches the same weights as an uninterrupted run; the demo and the Python API work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from tests.conftest import shared_dataset

from .conftest import TINY, graft, read_history

pytestmark = pytest.mark.integration

# train.ema: the weights' moving average is part of the resumable state, bit for bit too
ARGS = ["--strategy", "gradual", "--epochs", "4", "strategy.unfreeze_every=1", *TINY,
        "train.augment=light", "optim.warmup_epochs=1", "optim.schedule=cosine",
        "train.ema=0.9", "data.batch_size=8"]


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), f"{k} differs"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run that the interrupted ones must reproduce bit for bit."""
    from tests.conftest import shared_dataset

    d = tmp_path_factory.mktemp("full")
    rows = ["path,label,split"]
    for split, n in (("train", 12), ("val", 6)):  # the same photos as the small_csv fixture
        for cls in ("ants", "bees"):
            files = sorted((shared_dataset("hymenoptera_256") / split / cls).glob("*.jpg"))[:n]
            rows += [f"{f},{cls},{split}" for f in files]
    (d / "small.csv").write_text("\n".join(rows) + "\n")
    graft("train", "--data", d / "small.csv", "--out", d / "run", *ARGS)
    return d / "run"


def _same_run(full: Path, cut: Path) -> None:
    assert [h["epoch"] for h in read_history(cut)] == [1, 2, 3, 4]
    last = Path("checkpoints") / "last.safetensors"
    _same_weights(full / last, cut / last)
    _same_weights(full / "model.safetensors", cut / "model.safetensors")
    for key in ("val_loss", "ema_val_loss", "kept"):
        assert [h[key] for h in read_history(full)] == [h[key] for h in read_history(cut)], key
    assert json.loads((cut / "meta.json").read_text())["status"] == "completed"


def test_the_moving_average_is_validated_and_kept_when_better(full: Path) -> None:
    hist = read_history(full)
    assert all({"ema_val_accuracy", "ema_val_loss", "kept"} <= h.keys() for h in hist)
    assert hist[0]["ema_val_loss"] != hist[0]["val_loss"]  # 3 steps in: already an average
    metrics = json.loads((full / "metrics.json").read_text())
    best = hist[metrics["best_epoch"] - 1]
    chosen = best["ema_val_accuracy"] if best["kept"] == "ema" else best["val_accuracy"]
    # model.safetensors holds the candidate that won: the run's final val score is its score
    assert metrics["val"]["accuracy"] == pytest.approx(chosen)
    loss = best["ema_val_loss"] if best["kept"] == "ema" else best["val_loss"]
    assert metrics["val"]["loss"] == pytest.approx(loss, abs=1e-5)


def _kill_after(args: list[str], out: Path, epochs: int) -> None:
    """Start ``graft train`` and SIGKILL it (no chance to clean up) once ``epochs`` epochs are
    in its history."""
    proc = subprocess.Popen([sys.executable, "-m", "graftkit.cli.main", "train", *args,
                             "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        hist = out / "history.jsonl"
        if hist.is_file() and len(hist.read_text().splitlines()) >= epochs:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def test_killed_run_resumes_to_the_same_weights(small_csv: Path, full: Path, tmp_path: Path
                                                ) -> None:
    cut = tmp_path / "cut"
    _kill_after(["--data", str(small_csv), *ARGS], cut, 2)  # the same run, killed at epoch 2
    assert json.loads((cut / "meta.json").read_text())["status"] == "running"
    assert len(read_history(cut)) < 4
    graft("train", "--resume", cut)
    _same_run(full, cut)
    assert "already completed" in graft("train", "--resume", cut, check=False).stderr


def test_killed_probe_resumes_from_its_head_only_state(small_csv: Path, tmp_path: Path
                                                       ) -> None:
    # A cached probe's state holds the head (the backbone is the one the run is rebuilt with:
    # its pretrained weights, checked by their fingerprint): kilobytes per epoch, and the same
    # weights after a resume. The best head waits in the state until the stage ends.
    args = ["--data", str(small_csv), "--strategy", "linear_probe", "--epochs", "150",
            "--model", "efficientnet_lite0", "model.image_size=64", "train.threads=1",
            "report.enabled=false", "data.audit=false"]
    graft("train", *args, "--out", tmp_path / "full")
    cut = tmp_path / "cut"
    _kill_after(args, cut, 2)
    state = cut / "checkpoints" / "last.safetensors"
    with safe_open(str(state), framework="pt") as f:
        assert f.keys() and not any(k.startswith("model.backbone.") for k in f.keys())
        assert "frozen" in f.metadata()
        assert any(k.startswith("best.head.") for k in f.keys())
    assert 2 <= len(read_history(cut)) < 150
    assert not (cut / "model.safetensors").exists()  # killed: no chance to write it
    graft("train", "--resume", cut)
    assert [h["epoch"] for h in read_history(cut)] == list(range(1, 151))
    _same_weights(tmp_path / "full" / "model.safetensors", cut / "model.safetensors")
    assert [h["val_loss"] for h in read_history(tmp_path / "full")] == \
        [h["val_loss"] for h in read_history(cut)]


@contextmanager
def small_disk(where: Path, size: str, options: str = "") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root with CAP_SYS_ADMIN), else a skip."""
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}",
                                            "tmpfs", str(where)], capture_output=True
                                           ).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_marks_the_run_failed_and_resume_finishes_it(small_csv: Path, full: Path,
                                                                 tmp_path: Path) -> None:
    # 1.7 MB holds the first epoch's weights (0.4 MB) and checkpoint (0.85 MB: the weights, their
    # moving average, the head's optimizer state) but not the second epoch's new checkpoint
    # beside the old one: the disk fills up mid-run.
    with small_disk(tmp_path / "disk", "1700k") as disk:
        cut = disk / "run"
        proc = graft("train", "--data", small_csv, "--out", cut, *ARGS, check=False)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in line and f"graft train --resume {cut}" in line
        meta = json.loads((cut / "meta.json").read_text())
        assert meta["status"] == "failed" and "No space left" in meta["failure"]
        assert 1 <= len(read_history(cut)) < 4
        assert not [p for p in cut.rglob(".*.tmp")], "a partial temporary file was left"
        # space is freed: the run resumes and ends exactly where the uninterrupted one did
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        graft("train", "--resume", cut)
        _same_run(full, cut)
        assert "failure" not in json.loads((cut / "meta.json").read_text())


def test_python_api_mirrors_the_cli(small_csv: Path, tmp_path: Path) -> None:
    import graftkit

    run = graftkit.finetune(data=small_csv, model="test_efficientnet", strategy="last_n",
                            epochs=1, out=tmp_path / "api", quiet=True,
                            overrides={"model.pretrained": False, "model.image_size": 64})
    assert isinstance(run, graftkit.Run) and run.meta["status"] == "completed"
    image = small_csv.read_text().splitlines()[1].split(",")[0]
    (pred,) = run.predict(image, topk=2)
    assert pred["label"] in ("ants", "bees") and len(pred["top"]) == 2
    m = run.evaluate(split="val")
    assert m["n"] == 12 and 0.0 <= m["accuracy"] <= 1.0
    from_csv = run.evaluate(small_csv, split="val", name="csv-val")  # a labeled CSV manifest
    assert from_csv["n"] == 12 and from_csv["accuracy"] == pytest.approx(m["accuracy"])
    assert (run.path / "eval" / "csv-val" / "metrics.json").is_file()
    again = graftkit.load_run(tmp_path / "api")
    assert again.predict(image)[0]["prob"] == pytest.approx(pred["prob"])


def test_demo_runs_offline_and_learns(tmp_path: Path) -> None:
    proc = graft("demo", "--out", tmp_path / "demo", timeout=900)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]["accuracy"]
    assert "test accuracy" in proc.stderr + proc.stdout
    assert "run directory" in proc.stderr + proc.stdout
    for split in ("val", "test"):  # both held-out splits get a report
        assert (tmp_path / "demo" / "eval" / f"digits-{split}" / "report.html").is_file()
    assert "report.html" in proc.stderr + proc.stdout


def test_list_shows_every_registry() -> None:
    out = graft("list").stdout
    for name in ("efficientnet_lite0", "mobilenet_v2", "linear_probe", "lp_ft", "gradual",
                 "adamw", "one_cycle", "focal", "huber", "strong", "randaugment"):
        assert name in out


def test_ctrl_c_leaves_a_resumable_run(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "int"
    # many epochs: a tiny model's epoch takes milliseconds, and with 30 the signal could land
    # after training, in the final evaluation and report, instead of between epochs
    args = ["--strategy", "full", "--epochs", "1000", *TINY]
    proc = subprocess.Popen([sys.executable, "-m", "graftkit.cli.main", "train", "--data",
                             str(small_csv), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a terminal's Ctrl-C, even when CI started pytest with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        hist = out / "history.jsonl"
        if hist.is_file() and hist.read_text().strip():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # the Ctrl-C was lost: do not leave it training
        proc.kill()
        raise
    assert proc.returncode == 2 and "Traceback" not in err
    assert f"graft train --resume {out}" in err
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    done = len(read_history(out))
    assert 1 <= done < 1000
    (out / "config.yaml").write_text(
        (out / "config.yaml").read_text().replace("epochs: 1000", f"epochs: {done + 1}"))
    graft("train", "--resume", out)
    assert len(read_history(out)) == done + 1


def test_a_read_only_out_is_one_line(small_csv: Path, tmp_path: Path) -> None:
    with small_disk(tmp_path / "ro", "1m", ",ro") as ro:
        proc = graft("train", "--data", small_csv, "--out", ro / "run", *TINY, check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip() == f"error: Read-only file system: {ro / 'run'}"


def test_python_api_mistakes_are_graft_errors(probe_run: Path, small_csv: Path,
                                              tmp_path: Path) -> None:
    from graftkit import api
    from graftkit.errors import ConfigError, GraftError
    from graftkit.modalities import get

    run = api.Run(probe_run)
    img = next((shared_dataset("hymenoptera_256") / "val" / "ants").glob("*.jpg"))
    for kw in ({"batch_size": -1}, {"batch_size": 0}, {"batch_size": 2.5}, {"topk": 0},
               {"topk": "3"}, {"tta": 0}):
        with pytest.raises(GraftError, match=next(iter(kw))):
            run.predict([img], **kw)  # type: ignore[arg-type]
    for bad in (None, b"\xff\xd8", 3):
        with pytest.raises(GraftError, match="inputs"):
            run.predict(bad)
    with pytest.raises(GraftError, match="PIL image"):
        run.predict([[1, 2, 3]])
    with pytest.raises(GraftError, match="str or Path"):
        api.Run(None)  # type: ignore[arg-type]
    with pytest.raises(GraftError, match="threshold='bogus'"):
        run.calibrate(threshold="bogus")
    with pytest.raises(GraftError, match="workers=-1"):
        run.robustness(workers=-1)
    with pytest.raises(GraftError, match="engine='tpu'"):
        run.robustness(engine="tpu")
    with pytest.raises(ConfigError, match="given twice"):
        api.finetune(small_csv, epochs=1, overrides={"train.epochs": 2}, out=tmp_path / "a")
    with pytest.raises(ConfigError, match="overrides: a dict"):
        api.finetune(small_csv, overrides="optim.lr=0.1", out=tmp_path / "b")  # type: ignore
    with pytest.raises(GraftError, match="a text run predicts texts"):
        get("text").load(None)
    with pytest.raises(GraftError, match="overwrite='no': True or False"):
        api.finetune(small_csv, epochs=1, out=tmp_path / "c", overwrite="no")  # type: ignore
    with pytest.raises(GraftError, match="quiet=1"):
        run.evaluate(quiet=1)  # type: ignore[arg-type]
    with pytest.raises(GraftError, match="temperature='yes'"):
        run.calibrate(temperature="yes")  # type: ignore[arg-type]
    with pytest.raises(GraftError, match="already completed"):  # resume_dir is a run to go on
        api.train(run.config, resume_dir=probe_run)
    stopped = tmp_path / "stopped"
    shutil.copytree(probe_run, stopped)
    meta = json.loads((stopped / "meta.json").read_text())
    (stopped / "meta.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    with pytest.raises(GraftError, match="goes on in its own folder"):
        api.train(run.config, out=tmp_path / "elsewhere", resume_dir=stopped)
    with pytest.raises(GraftError, match="cfg: a Config"):
        api.train({"data": {"path": str(small_csv)}})  # type: ignore[arg-type]
    assert not any((tmp_path / n).exists() for n in "abc")
