"""Small pieces of the run directory: output names, the outputs list, strict JSON, and
replacing a run given as "."."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from graftkit import run as rd


def test_output_stems_never_collide() -> None:
    files = [Path("x/a.jpg"), Path("y/a.jpg"), Path("a-2.jpg"), Path("z/a.png")]
    stems = rd.unique_stems(files)
    assert len(set(stems)) == 4 and stems[:2] == ["a", "a-2"]


def test_outputs_with_spaces_stay_graft_s_own(tmp_path: Path) -> None:
    rd.claim_outputs(tmp_path / "ex", ["my photo.gradcam.png"])
    (tmp_path / "ex" / "my photo.gradcam.png").write_text("x")
    rd.claim_outputs(tmp_path / "ex", ["my photo.gradcam.png"])  # a rerun replaces its own


def test_json_files_are_strict(tmp_path: Path) -> None:
    rd.write_json(tmp_path / "m.json", {"r2": math.nan, "rows": [1.0, math.inf], "n": 1})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"r2": None, "rows": [1.0, None], "n": 1} and "NaN" not in text


def test_a_run_given_as_dot_is_replaced_beside_itself(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text("{}")
    monkeypatch.chdir(run)
    new = rd.sibling(Path("."), "new")
    assert new.parent == tmp_path  # not inside the run it replaces
    (new / "meta.json").write_text('{"new": true}')
    rd.replace_dir(Path("."), new)
    os.chdir(tmp_path)
    assert json.loads((run / "meta.json").read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_saves_its_data_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """evaluate and --resume from another folder find the data the run was trained on."""
    from graftkit.config import build_config
    from graftkit.launch import resolve_inputs

    (tmp_path / "photos" / "cat").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = resolve_inputs(build_config(overrides={"data.path": "photos",
                                                 "data.unlabeled": "nowhere"}))
    assert cfg.data.path == str(tmp_path / "photos")
    assert cfg.data.unlabeled == "nowhere"  # (its own check says it does not exist)
