"""Decode once: the data check's decoded files are kept for the first reader, within a bound,
and only while the file is unchanged; the extraction reads a batch in the thread setting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from graftkit.data import decoded
from graftkit.data.audio import load_audio
from graftkit.data.dataset import ImageDataset
from graftkit.data.images import load_image
from graftkit.data.sources import discover
from graftkit.errors import ConfigError


@pytest.fixture(autouse=True)
def _empty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(decoded.ENV, raising=False)
    decoded.clear()
    yield
    decoded.clear()


def _tree(root: Path, n: int = 4, side: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_discovery_keeps_what_it_decoded_for_the_first_reader(tmp_path: Path) -> None:
    spec = discover(_tree(tmp_path / "d"))
    items = [it for split in spec.splits.values() for it in split]
    assert decoded.kept() == (8, 8 * 16 * 16 * 3)
    path = items[0][0]
    first = load_image(path)  # taken: no decode
    assert decoded.kept()[0] == 7
    second = load_image(path)  # nothing kept any more: decoded again, the same pixels
    assert first is not second
    assert np.array_equal(np.asarray(first), np.asarray(second))
    with Image.open(path) as raw:
        assert np.array_equal(np.asarray(first), np.asarray(raw.convert("RGB")))
    ds = ImageDataset(items, lambda img: np.asarray(img))
    for i in range(len(ds)):
        ds[i]
    assert decoded.kept() == (0, 0)  # the first pass took every one
    assert decoded.clear() == {"kept": 8, "taken": 8, "past_bound": 0}
    assert decoded.clear() == {"kept": 0, "taken": 0, "past_bound": 0}  # counts since the last


def test_a_file_changed_after_the_check_is_decoded_again(tmp_path: Path) -> None:
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
    load_image(p, keep=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(p)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # whatever the clock's resolution
    assert np.asarray(load_image(p)).max() == 200
    assert decoded.kept()[0] == 1  # the stale decode is not handed out (cleared with the run)


def test_the_memory_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(decoded.ENV, str(2 * 16 * 16 * 3 / 2**20))  # room for two images
    discover(_tree(tmp_path / "d"))
    assert decoded.kept() == (2, 2 * 16 * 16 * 3)
    assert decoded.clear() == {"kept": 2, "taken": 0, "past_bound": 6}
    monkeypatch.setenv(decoded.ENV, "0")
    discover(_tree(tmp_path / "e"))
    assert decoded.kept() == (0, 0)
    monkeypatch.setenv(decoded.ENV, "lots")
    with pytest.raises(ConfigError, match=decoded.ENV):
        decoded.limit()


def test_sound_files_are_kept_per_sample_rate(tmp_path: Path) -> None:
    p = tmp_path / "c.wav"
    wave = np.sin(np.linspace(0, 200, 8000)).astype(np.float32) * 0.5
    sf.write(p, wave, 8000)
    kept = load_audio(p, 16000, keep=True)
    assert decoded.kept() == (1, kept.nbytes)
    assert load_audio(p, 8000).shape == (8000,)  # another rate: decoded, the kept one stays
    assert load_audio(p, 16000) is kept
    assert decoded.kept() == (0, 0)


def test_extraction_reads_a_batch_in_the_thread_setting_and_keeps_the_order() -> None:
    """Without DataLoader workers, a batch's items are read in the thread setting's threads
    (with one thread, in this one); the rows are the same and in the dataset's order."""
    import threading

    import torch
    from torch.utils.data import Dataset

    from graftkit.train.features import extract

    readers: list[str] = []

    class Items(Dataset):
        def __len__(self) -> int:
            return 11

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            readers.append(threading.current_thread().name)
            return torch.full((3,), float(i)), i

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        x2, y2 = extract(lambda b: b * 2, Items(), 4, torch.device("cpu"))
        in_pool = set(readers)
        readers.clear()
        torch.set_num_threads(1)
        x1, y1 = extract(lambda b: b * 2, Items(), 4, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    assert set(readers) == {threading.main_thread().name}
    assert threading.main_thread().name not in in_pool and len(in_pool) <= 2
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert y2.tolist() == list(range(11)) and x2[:, 0].tolist() == [2.0 * i for i in range(11)]


def test_local_processes_share_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(decoded.ENV, "100")
    try:
        decoded.share(4)
        assert decoded.limit() == 25 * 2**20
    finally:
        decoded.share(1)
    assert decoded.limit() == 100 * 2**20
