"""User mistakes give one readable line and exit 2, never a traceback; nothing is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import TINY, graft

pytestmark = pytest.mark.integration


def _fails(*args: str) -> str:
    proc = graft(*args, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ")
    return lines[-1]


# The corpus of mistakes runs in-process (tests/integration/test_bad_inputs.py); these go through
# the installed entry point, whose typer bundles its own click.
@pytest.mark.parametrize(("args", "says"), [
    (["train", "--epochs", "abc"], "'--epochs'"), (["nosuchcmd"], "No such command 'nosuchcmd'"),
])
def test_usage_errors_are_one_line(args: list[str], says: str) -> None:
    assert says in _fails(*args)


def test_existing_output_is_never_overwritten_silently(tmp_path: Path, small_csv: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    assert "not empty" in _fails("train", "--data", small_csv, "--out", mine, *TINY)
    assert "not a graft run directory" in _fails("train", "--data", small_csv, "--out", mine,
                                                 "--overwrite", *TINY)
    assert (mine / "precious.txt").read_text() == "keep me"


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                             small_csv: Path) -> None:
    out = tmp_path / "nan"
    line = _fails("train", "--data", small_csv, "--strategy", "lp_ft", "--out", out, *TINY,
                  "strategy.probe_epochs=2", "optim.name=sgd", "optim.lr=1e30",
                  "train.epochs=3")
    assert ("loss became" in line or "non-finite" in line) and "last good checkpoint" in line
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "diverged"
    assert (out / "model.safetensors").is_file()  # from the probe stage
    image = small_csv.read_text().splitlines()[1].split(",")[0]
    pred = json.loads(graft("predict", out, image, "--json").stdout)
    assert 0.0 <= pred[0]["prob"] <= 1.0  # the kept weights are finite and usable


def test_overwrite_replaces_a_failed_run_and_resume_refuses_changed_classes(
        tmp_path: Path, small_csv: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "data_report.json").write_text("{}")  # a run that failed before meta.json
    (out / "checkpoints").mkdir()
    graft("train", "--data", small_csv, "--out", out, "--overwrite", "--epochs", "1", *TINY)
    assert json.loads((out / "meta.json").read_text())["status"] == "completed"
    meta = json.loads((out / "meta.json").read_text())
    meta["status"] = "interrupted"
    meta["classes"] = ["ants", "wasps"]
    (out / "meta.json").write_text(json.dumps(meta))
    assert "changed since this run started" in _fails("train", "--resume", out)
    assert "drop the other options" in _fails("train", "--resume", out, "--batch-size", "8")


def test_overwrite_with_bad_data_leaves_the_old_run_byte_identical(
        tmp_path: Path, small_csv: Path, hymenoptera: Path) -> None:
    out = tmp_path / "run"
    graft("train", "--data", small_csv, "--out", out, "--epochs", "1", *TINY)

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
                if p.is_file()}

    before = snapshot()
    one_class = tmp_path / "one"
    (one_class / "ants").mkdir(parents=True)
    for f in list((hymenoptera / "train" / "ants").glob("*.jpg"))[:3]:
        (one_class / "ants" / f.name).write_bytes(f.read_bytes())
    assert "only one class" in _fails("train", "--data", one_class, "--out", out, "--overwrite",
                                      *TINY)
    assert snapshot() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no sibling left
    graft("train", "--data", small_csv, "--out", out, "--overwrite", "--epochs", "1", *TINY)
    assert json.loads((out / "meta.json").read_text())["status"] == "completed"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
