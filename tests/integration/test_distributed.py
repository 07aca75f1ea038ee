"""graft train --nproc: two gloo processes on the CPU give the single-process run (full
fine-tuning and the cached probe), only rank 0 writes, a killed process leaves a run that
--resume finishes (with another number of processes), and mistakes are one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.integration.conftest import TINY, graft, read_history

# no dropout and no random augmentation: each rank draws its own random numbers, so only the
# deterministic parts can match a single process bit for bit
EXACT = [*TINY[:-1], "model.dropout=0", "train.augment=none", "--batch-size", "10",
         "--no-audit"]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys()
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x
               if x[k].is_floating_point())


def test_two_processes_train_lp_ft_as_one(small_csv: Path, tmp_path: Path) -> None:
    """LP-FT: a probe on cached features (each rank extracts half of them, all get them back,
    every rank trains the same head), then full fine-tuning in DDP, AdamW, global batch 10 over
    24 images (10 + 10 + 4, each split in two). The final weights equal a single process's
    within 1e-5; history, checkpoints and reports are written once."""
    args = ["train", "--data", small_csv, "--strategy", "lp_ft", "--epochs", "2",
            "strategy.probe_epochs=2", "--lr", "3e-4", "train.early_stop.metric=loss",
            "train.feature_cache=memory", *EXACT]
    graft("--threads", "1", *args, "--out", tmp_path / "one")
    proc = graft("--threads", "2", *args, "--out", tmp_path / "two", "--nproc", "2")
    assert proc.stdout.strip().splitlines() == [str(tmp_path / "two")]  # printed once
    assert "[rank" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("stage 2/2") == 1
    one, two = read_history(tmp_path / "one"), read_history(tmp_path / "two")
    assert [(r["epoch"], r["stage"]) for r in two] == [(r["epoch"], r["stage"]) for r in one]
    assert len(two) == 4 and two[-1]["stage"] != two[0]["stage"]
    for key in ("train_loss", "val_loss"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], abs=1e-6)
    assert _max_diff(tmp_path / "one" / "model.safetensors",
                     tmp_path / "two" / "model.safetensors") <= 1e-5
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["best_epoch"] == 4
    assert meta["distributed"] == {"world_size": 2, "nodes": 1, "backend": "gloo",
                                   "threads_per_process": 1}
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m2["val"]["loss"] == pytest.approx(m1["val"]["loss"], abs=1e-5)


def _rank_pids(local_rank: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"graftkit.cli.main" in cmd and f"LOCAL_RANK={local_rank}".encode() in env:
            pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_a_killed_process_leaves_a_run_that_resume_finishes(small_csv: Path,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "graftkit.cli.main", "--threads", "2", "train", "--data",
           str(small_csv), "--strategy", "full", "--epochs", "40", *map(str, EXACT),
           "--out", str(out), "--nproc", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    deadline = time.monotonic() + 300
    history = out / "history.jsonl"
    while not (history.is_file() and history.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victims = _rank_pids(1)
    assert victims, "no training process with LOCAL_RANK=1 found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "training process 1 of 2 was killed by SIGKILL" in lines[0]
    assert f"graft train --resume {out}" in lines[0]
    assert "Traceback" not in stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "failed" and "killed by SIGKILL" in meta["failure"]
    done = len(read_history(out))
    assert 1 <= done < 40
    # resume with one process (another number than before)
    graft("--threads", "1", "train", "--resume", out)
    history_rows = read_history(out)
    assert [r["epoch"] for r in history_rows] == list(range(1, 41))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "completed" and "distributed" not in meta


def test_mistakes_are_one_line(small_csv: Path, tmp_path: Path) -> None:
    proc = graft("train", "--data", small_csv, *TINY, "--batch-size", "9", "--nproc", "2",
                 "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --nproc 2: the global batch of 9 (data.batch_size) does not split over 2 "
        "processes; give a multiple of 2"]
    assert not (tmp_path / "r").exists()
    # a mistake only the workers find (the data's classes): one line, from rank 0
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\n" + small_csv.read_text().split("\n", 1)[1].replace(
        ",val", ",nope"))
    proc = graft("train", "--data", bad, *TINY, "--nproc", "2", "--out", tmp_path / "r2",
                 check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
    assert not (tmp_path / "r2").exists()


def test_a_nan_loss_stops_every_process(small_csv: Path, tmp_path: Path) -> None:
    """The loss is the global batch's on every rank: all stop together, one line, no hang."""
    proc = graft("--threads", "2", "train", "--data", small_csv, *TINY, "--strategy", "full",
                 "--epochs", "5", "--batch-size", "10", "--no-audit", "--lr", "1e12",
                 "optim.name=sgd", "--nproc", "2", "--out", tmp_path / "r", check=False,
                 timeout=300)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("error: loss became nan"), proc.stderr
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["status"] == "diverged"
