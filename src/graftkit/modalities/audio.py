"""Sounds: class folders or CSV manifests of sound files (WAV, FLAC, OGG, MP3), speech encoders
(the built-in Whisper tiny.en encoder, Hugging Face audio encoders), the audio perturbations,
occlusion over the log-mel spectrogram."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .. import run as rd
from ..data.audio import AUDIO_EXTENSIONS, BadAudio, audio_info, decode_audio, load_audio
from ..errors import BadInput, ConfigError, DataError
from .base import MODALITIES, ExportSignature, Items, Modality, file_digest

MAX_INPUT_SAMPLES = 200  # clips decoded for the drift reference (spread over the split)
DETECT_FILES = 50  # files looked at to tell a folder of sounds
IMAGE_ONLY_AUGMENT = ("randaugment", "augmix", "augmix_jsd")


def _check_audio(p: Path) -> str | None:
    try:
        load_audio(p, keep=True)  # kept for the first pass over the data: decoded once
        return None
    except BadAudio as e:
        return e.reason


def _sound_files() -> Any:
    from ..data.sources import FileKind

    return FileKind("sound file", _check_audio)


def _is_sound(name: str) -> bool:
    return Path(name).suffix.lower() in AUDIO_EXTENSIONS


def _spectrogram_png(wave: np.ndarray, sample_rate: int, heat: np.ndarray | None = None,
                     title: str = "", width: float = 2.4) -> bytes:
    """A small log-mel spectrogram picture (and an attribution map over it) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.audio import AudioDataConfig, log_mel

    dc = AudioDataConfig(window_s=max(0.1, min(30.0, len(wave) / sample_rate)))
    spec = log_mel(wave, dc)
    fig, ax = plt.subplots(figsize=(width, 1.6), dpi=80)
    ax.imshow(spec, origin="lower", aspect="auto", cmap="magma")
    if heat is not None:
        ax.imshow(heat, origin="lower", aspect="auto", cmap="viridis", alpha=0.45,
                  extent=(-0.5, spec.shape[1] - 0.5, -0.5, spec.shape[0] - 0.5))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.02)
    plt.close(fig)
    return buf.getvalue()


class AudioModality(Modality):
    name, noun = "audio", "clip"
    json_field, form_field, form_files = "sounds", "file", True
    json_help = "base64 sound files (WAV, FLAC, OGG, MP3)"
    accept = "audio/*,.wav,.flac,.ogg,.mp3"
    stat_keys = ("seconds", "rms_db", "peak")
    exportable = True

    @property
    def default_model(self) -> str:  # type: ignore[override]
        from ..models.audio_builtin import DEFAULT_AUDIO_MODEL

        return DEFAULT_AUDIO_MODEL

    # --- data ---------------------------------------------------------------------------------
    def detect(self, path: str | None, d: Any) -> bool:
        """A folder whose first files are mostly sound files, or a CSV manifest whose paths
        are."""
        import csv

        p = Path(path or "").expanduser()
        if p.is_dir():
            names = []
            for f in p.rglob("*"):
                if f.is_file() and not any(part.startswith(".") for part in f.parts):
                    names.append(f.name)
                    if len(names) >= DETECT_FILES:
                        break
            return bool(names) and sum(map(_is_sound, names)) > len(names) / 2
        if p.is_file() and p.suffix.lower() == ".csv":
            try:
                with p.open(newline="", encoding="utf-8-sig", errors="replace") as f:
                    rows = [r for _, r in zip(range(DETECT_FILES), csv.DictReader(f))]
            except (OSError, csv.Error):
                return False
            paths = [str(r.get(d.path_column) or "") for r in rows]
            return bool(paths) and sum(map(_is_sound, paths)) > len(paths) / 2
        return False

    def check_config(self, cfg: Any) -> None:
        if cfg.train.augment in IMAGE_ONLY_AUGMENT:
            raise ConfigError(f"config key 'train.augment': {cfg.train.augment!r} augments "
                              "images; audio runs take none, light, standard or strong")
        if cfg.train.mixup or cfg.train.cutmix:
            raise ConfigError("config key 'train.mixup': MixUp/CutMix are for images")
        if cfg.train.wise_ft is not None and cfg.train.wise_ft_objective != "clean":
            raise ConfigError("config key 'train.wise_ft_objective': the corruption objective "
                              "is for images; audio runs take clean")
        if cfg.model.weights is not None:
            raise ConfigError("config key 'model.weights': audio encoders load from a built-in, "
                              "a Hugging Face name or a local model directory (model.name)")
        if cfg.model.image_size is not None:
            raise ConfigError("config key 'model.image_size': audio models take no image size; "
                              "set model.clip_seconds")

    def discover(self, d: Any, task: str, progress: Any = None) -> Any:
        from ..data.sources import discover

        spec = discover(d.path or "", task=task, val_fraction=d.val_fraction,
                        test_fraction=d.test_fraction, seed=d.split_seed,
                        path_column=d.path_column, label_column=d.label_column,
                        progress=progress, kind=_sound_files())
        spec.modality = self.name
        return spec

    def discover_unlabeled(self, path: str, d: Any, progress: Any = None
                           ) -> tuple[list[str], list[dict[str, str]]]:
        from ..data.sources import discover_pool

        return discover_pool(path, path_column=d.path_column, progress=progress,
                             kind=_sound_files())

    weak_view, strong_view = "light", "strong"  # FixMatch: shift and gain / + noise, SpecAugment

    def eval_items(self, data: str | Path, meta: dict[str, Any], d: Any, split: str | None
                   ) -> tuple[Items, list[dict[str, str]], str]:
        from ..data.sources import discover_eval

        return discover_eval(data, meta["classes"], task=meta["task"], split=split,
                             path_column=d.path_column, label_column=d.label_column,
                             kind=_sound_files())

    def expand_inputs(self, inputs: Sequence[str | Path], text_column: str = "text"
                      ) -> list[str]:
        out: list[str] = []
        for item in map(Path, inputs):
            if item.is_dir():
                found = sorted(str(f) for f in item.rglob("*") if _is_sound(f.name))
                if not found:
                    raise DataError(f"{item}: no sound files in this folder")
                out += found
            else:
                out.append(str(item))
        if not out:
            raise DataError("no input sound files given")
        return out

    # --- model --------------------------------------------------------------------------------
    def auto_candidates(self) -> list[str]:
        from ..models.audio import AUDIO_MODELS

        return AUDIO_MODELS.names()

    def model_origin(self, name: str) -> list[str]:
        from ..models.audio import AUDIO_MODELS

        return [f"`{name}`: {AUDIO_MODELS.help(name)}"] if name in AUDIO_MODELS else []

    def check_model(self, name: str) -> None:
        from ..models.audio import AUDIO_MODELS, is_audio_model

        if not is_audio_model(name):
            raise ConfigError(f"config key 'model.name': {name!r} is not an audio model; the data "
                              f"is sound (try {', '.join(AUDIO_MODELS.names())}, a Hugging Face "
                              "Whisper/wav2vec2/HuBERT name or a local model directory)")

    def create_model(self, m: Any, spec: Any, n_out: int, out: Path, resuming: bool,
                     load_backbone: bool = True) -> tuple[Any, dict[str, Any]]:
        """The audio adapter, its clip window chosen from the training (and unlabeled) clips'
        durations unless
        set; and the clip-length statistics of every split."""
        from ..data.audio import AudioDataConfig, choose_window
        from ..models.audio import create_audio_model, save_audio_assets

        seconds = {s: [audio_info(p).get("seconds", 0.0) for p, _ in items]
                   for s, items in spec.splits.items()}
        if resuming:
            window = AudioDataConfig.from_dict(
                rd.read_json(out / rd.META)["preprocessing"]).window_s
        else:
            pool = [audio_info(p).get("seconds", 0.0) for p in spec.unlabeled]
            window = m.clip_seconds or choose_window(seconds.get("train", []) + pool)
        model = create_audio_model(m.name or "", n_out, pretrained=m.pretrained and load_backbone,
                                   dropout=m.dropout, clip_seconds=window)
        if not resuming:
            save_audio_assets(model, out)
        return model, {"audio": {"clip_seconds": window, "crop": {
            "train": "random window", "eval": "centre window"}, "durations": {
                s: _durations(v, window) for s, v in seconds.items()}}}

    def rebuild(self, path: Path, meta: dict[str, Any]) -> Any:
        from ..data.audio import AudioDataConfig
        from ..models.audio import rebuild_audio_model

        return rebuild_audio_model(meta["num_outputs"], meta["model"]["dropout"],
                                   AudioDataConfig.from_dict(meta["preprocessing"]), path)

    def model_view(self, model: Any) -> Any:
        return model.prepare  # waveform -> {"input", "length"}

    def batch(self, model: Any, prepared: list[Any]) -> Any:
        from ..models.audio import stack_inputs

        return stack_inputs(prepared)

    def tta_views(self, n: int, model: Any, cfg: Any) -> list[Any]:
        from ..data.tta import audio_views, first

        dc = model.data_config
        if dc.frontend == "log_mel":  # spectrogram frames; silence is a clip's lowest value
            views = audio_views(dc.sample_rate / dc.hop_length)
        else:  # samples, normalised over the clip's own: the window's padding is 0
            views = audio_views(float(dc.sample_rate), silence=0.0)
        return first(views, n, "audio runs")

    # --- inputs -------------------------------------------------------------------------------
    def load(self, item: Any) -> tuple[str, Any]:
        if isinstance(item, np.ndarray):  # an already decoded 16 kHz waveform
            return "waveform", item.astype(np.float32)
        try:
            return str(item), load_audio(item)
        except BadAudio as e:
            raise DataError(e.reason) from None

    def decode_upload(self, raw: bytes | str, max_pixels: int) -> Any:
        if isinstance(raw, str):
            raise BadInput("this model takes sound files, not texts", "bad_request")
        return decode_audio(raw)

    def warmup_input(self, size: int) -> Any:
        return np.zeros(16000, dtype=np.float32)

    def input_stats(self, decoded: Any) -> dict[str, float]:
        from ..data.audio import wave_stats

        return wave_stats(np.asarray(decoded), 16000)

    def _reference_inputs(self, items: Sequence[str]) -> list[Any]:
        waves = []
        for item in items[::max(1, len(items) // MAX_INPUT_SAMPLES)]:
            try:
                waves.append(load_audio(item))
            except BadAudio:
                continue
        return waves

    # --- data audit -----------------------------------------------------------------------------
    def content_key(self, item: str) -> str:
        return file_digest(item)

    # near_key: none; near copies (re-encoded, trimmed) are found by the encoder's features
    def item_stats(self, item: str) -> dict[str, float]:
        return audio_info(item)

    # --- consumers ----------------------------------------------------------------------------
    def robustness_names(self, spec: str | None) -> list[str]:
        from ..robustness.audio_perturbations import resolve_audio_perturbations

        return resolve_audio_perturbations(spec or "all")

    def robust_subset(self) -> str:
        from ..robustness.audio_perturbations import AUDIO_FAMILY_SUBSET

        return ",".join(AUDIO_FAMILY_SUBSET)

    def robustness(self, model: Any, cal: Any, items: Items, names: list[str], sevs: list[int],
                   seed: int, batch_size: int, workers: int | None, progress: Any,
                   forward: Any = None) -> tuple[dict[str, Any], Any]:  # (torch runs it)
        """Clips are perturbed as decoded (16 kHz mono, before the window and the log-mel)."""
        import torch

        from ..models.audio import stack_inputs
        from ..robustness.audio_perturbations import examples, run_audio_perturbations

        waves = [self.load(p)[1] for p, _ in items]
        targets = np.array([int(t) for _, t in items])

        @torch.no_grad()
        def predict_probs(batch: list[np.ndarray]) -> np.ndarray:
            x = stack_inputs([model.prepare(w) for w in batch])
            return cal.probs(model(x).float()).numpy()

        results = run_audio_perturbations(predict_probs, waves, targets, names, sevs, seed=seed,
                                          batch_size=batch_size, progress=progress,
                                          decide=cal.decide)
        return results, (waves[0], examples(waves[0], names, sevs, seed))

    def robustness_figures(self, shown: Any, names: list[str], sevs: list[int], out: Path,
                           seed: int) -> dict[str, Any]:
        from ..robustness.plots import plot_audio_examples

        wave, examples = shown
        plot_audio_examples(wave, 16000, examples, out / "examples.png")
        return {}

    def export_signature(self, model: Any) -> ExportSignature:
        """The adapter on (batch, n_mels, frames) float32 spectrograms (or (batch, samples)
        waveforms) and (batch,) int64 own lengths; the batch is dynamic, the window fixed."""
        import torch

        from ..models.audio import stack_inputs

        rng = np.random.default_rng(0)
        clips = [rng.normal(0, 0.1, n).astype(np.float32) for n in (9000, 30000)]
        x = stack_inputs([model.prepare(c) for c in clips])  # batch 2: never specialised to 1
        dc = model.data_config
        shape = (["batch", dc.n_mels, dc.frames] if dc.frontend == "log_mel"
                 else ["batch", dc.samples])
        inputs = [{"name": "input", "shape": shape, "dtype": "float32",
                   "description": f"the clip's window preprocessed as in preprocessing "
                                  f"({dc.frontend})"},
                  {"name": "length", "shape": ["batch"], "dtype": "int64",
                   "description": "the clip's own length in input steps (not its padding)"}]
        return ExportSignature(WindowInputs(model).eval(),
                               (x["input"], x["length"].to(torch.int64)), inputs,
                               lambda batch: (batch["input"], batch["length"]))

    def export_assets(self, model: Any, run_dir: Path, bundle_dir: Path) -> dict[str, Any]:
        """No files: the window and the log-mel parameters are numbers (the filters are
        recomputed from them)."""
        pre = model.data_config.to_dict()
        return {**pre, "recipe": _recipe(pre)}

    def export_fallback(self, meta: dict[str, Any]) -> tuple[list[Any], str]:
        rng = np.random.default_rng(0)
        t = np.arange(16000) / 16000
        return [(0.3 * np.sin(2 * np.pi * f * t) + rng.normal(0, 0.02, len(t))).astype(
            np.float32) for f in (220, 440, 880, 1760)], "synthetic tones"

    def card_notes(self, pre: dict[str, Any]) -> dict[str, str]:
        w = pre["window_s"]
        return {
            "backbone": "speech encoder (Whisper / wav2vec2 family)",
            "input": f"a {w} s window at {pre['sample_rate']} Hz ({pre['frontend']})",
            "cut": f"Clips are cut to their centre {w} s: sound outside that window does not "
                   "count, and shorter clips are padded with silence.",
            "shift": "recordings from other microphones, rooms, speakers, accents or languages",
            "perturbations": "audio perturbations (noise, low-pass, telephone band, clipping, "
                             "speed, reverberation, gain)",
            "degraded": "noisy, band-limited, clipped or reverberant recordings",
            "example": '["clip.wav"]',
            "libraries": "soundfile, soxr",
        }

    def explain_methods(self) -> list[str]:
        return ["occlusion"]

    def explain(self, run: Any, inputs: list[str | Path], texts: list[str], method: str | None,
                target: str | None, out_dir: Path, topk: int) -> list[dict[str, Any]]:
        from ..explain.audio import explain_clips

        if texts:
            raise ConfigError(f"--text is for text runs; {str(run.path)!r} is an audio run")
        if method not in (None, "occlusion"):
            raise ConfigError(f"unknown explanation method {method!r} for audio runs; choose "
                              "occlusion")
        return explain_clips(run, self.expand_inputs(inputs), target, out_dir, topk)

    def gallery(self, examples: list[dict[str, Any]], model: Any, classes: list[str], cal: Any,
                out: Path) -> list[dict[str, Any]]:
        """Each clip's log-mel spectrogram thumbnail."""
        shown = []
        for ex in examples:
            try:
                png = _spectrogram_png(load_audio(ex["item"]), 16000)
                thumb = "data:image/png;base64," + base64.b64encode(png).decode()
            except BadAudio:
                thumb = None
            shown.append({**ex, "thumb": thumb, "label": Path(ex["item"]).name, "cam": None})
        return shown


class WindowInputs(nn.Module):
    """An audio adapter on its two tensors as positional arguments: what the exporters trace
    (the adapter itself takes one dict)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: Any, length: Any) -> Any:  # noqa: A002 - the graph's input name
        return self.model({"input": input, "length": length})  # (B, K)


def _recipe(pre: dict[str, Any]) -> str:
    """The preprocessing in words (bundle.json), as graftkit.export.light does it."""
    window = (f"decode (soundfile), average the channels, resample to {pre['sample_rate']} Hz "
              f"(soxr HQ); crop the centre {pre['window_s']} s of a longer clip or pad a shorter "
              "one with silence; length = the clip's own part")
    if pre["frontend"] == "waveform":
        return window + "; normalise the clip's own samples to zero mean, unit variance"
    return (window + f"; Whisper log-mel: centred {pre['n_fft']}-sample Hann STFT every "
            f"{pre['hop_length']} samples, power, {pre['n_mels']} Slaney mel filters, log10, floor "
            "8 below the peak, (x + 4) / 4; length in frames = ceil(own samples / hop)")


def _durations(seconds: list[float], window: float) -> dict[str, float]:
    if not seconds:
        return {"n": 0}
    s = np.asarray(seconds, dtype=np.float64)
    return {"n": int(len(s)), "mean": float(s.mean()), "min": float(s.min()),
            "p50": float(np.percentile(s, 50)), "p95": float(np.percentile(s, 95)),
            "max": float(s.max()), "cropped": int((s > window + 1e-6).sum()),
            "cropped_fraction": float((s > window + 1e-6).mean())}


MODALITIES.register("audio", "sound files: class folders or a CSV manifest")(AudioModality())

__all__ = ["AudioModality"]
