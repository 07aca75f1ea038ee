"""Sound files -> model-rate mono waveforms -> fixed windows -> log-mel spectrograms.

Decoding is soundfile's (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3; 8/16/24/32-bit integer
and float samples, any rate); channels are averaged to mono and the rate is converted with soxr
(the "HQ" quality of the SoX resampler). A clip longer than the model's window is cropped (a
random window in training, the centre one for evaluation and prediction); a shorter one is
padded with silence, as Whisper pads to its 30 s, but only to the window the data needs.

The log-mel spectrogram is Whisper's (``WhisperFeatureExtractor``: a centred 25 ms Hann STFT every
10 ms, power, Slaney mel filters, log10, a floor 8 below the clip's peak, scaled by 1/4), computed
here in numpy so that the torch-free predictor of an exported bundle computes exactly the same.

This module imports neither torch nor transformers (the exported bundle's predictor uses it).
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput, GraftError
from . import decoded

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif")
MAX_SECONDS = 600.0  # a longer file is refused (reading it would hold 10 min+ of samples)
MIN_SAMPLES = 16  # a shorter clip is no sound


class BadAudio(BadInput):
    """A file or upload that is not a usable sound; ``reason`` says why."""

    def __init__(self, reason: str, code: str = "bad_audio") -> None:
        super().__init__(reason, code)


@dataclass(frozen=True)
class AudioDataConfig:
    """What an audio model expects of its input; saved in the run metadata (``kind: audio``).

    ``frontend`` is ``log_mel`` (Whisper-style spectrogram made here) or ``waveform`` (the raw
    window, for encoders that take samples: wav2vec2, HuBERT). ``window_s``: the clip window in
    seconds (every clip is cropped or padded to it).
    """

    window_s: float
    sample_rate: int = 16000
    frontend: str = "log_mel"
    n_mels: int = 80
    n_fft: int = 400
    hop_length: int = 160
    pooling: str = "mean"  # over the clip's own frames (not the silence padding it)

    def __post_init__(self) -> None:
        if not 0.1 <= self.window_s <= 30.0:
            raise GraftError(f"config key 'model.clip_seconds': {self.window_s} s is outside "
                             "0.1-30 s")

    @property
    def samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def frames(self) -> int:
        """Spectrogram frames of one window (an even number: Whisper's second convolution halves
        it)."""
        n = self.samples // self.hop_length
        return n + (n % 2)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "audio", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioDataConfig:
        if d.get("kind") != "audio":
            raise GraftError(f"preprocessing of kind {d.get('kind')!r} is not for an audio model")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """libsndfile's and soxr's errors -> one BadAudio line."""
    try:
        yield
    except BadAudio:
        raise
    except MemoryError:
        raise BadAudio(f"{what}: too large to decode") from None
    except Exception as e:  # noqa: BLE001 - soundfile raises LibsndfileError, RuntimeError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = re.sub(r"^Error opening .*?: ", "", first).rstrip(".")  # soundfile names a repr
        raise BadAudio(f"{what}: not a readable sound file ({first})") from None


def _decode(source: Any, what: str, sample_rate: int) -> np.ndarray:
    import soundfile as sf

    with _reading(what):
        with sf.SoundFile(source) as f:
            if f.frames > MAX_SECONDS * f.samplerate:
                raise BadAudio(f"{what}: {f.frames / f.samplerate:.0f} s is longer than "
                               f"{MAX_SECONDS:.0f} s", "too_long")
            rate = f.samplerate
            data = f.read(dtype="float32", always_2d=True)  # (frames, channels), in [-1, 1]
        if data.shape[0] < MIN_SAMPLES:
            raise BadAudio(f"{what}: no sound in it ({data.shape[0]} samples)", "empty_audio")
        wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if not np.isfinite(wave).all():
            raise BadAudio(f"{what}: the samples hold NaN or infinity")
        return resample(wave, rate, sample_rate)


def resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``wave`` at ``rate`` Hz -> at ``target`` Hz (soxr HQ), float32."""
    if rate == target:
        return np.ascontiguousarray(wave, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(wave, dtype=np.float32), rate, target).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = 16000, keep: bool = False) -> np.ndarray:
    """The mono waveform of a sound file at ``sample_rate``; :class:`BadAudio` if unusable.
    ``keep``: the data check's decode, kept for the first reader (see :mod:`.decoded`)."""
    p = Path(path)
    if not p.is_file():
        raise BadAudio(f"{p}: no such file", "not_found")
    st = p.stat()
    if st.st_size == 0:
        raise BadAudio(f"{p}: zero-byte file", "empty_audio")
    return decoded.read(decoded.key(p, st, sample_rate), keep,
                        lambda: _decode(str(p), str(p), sample_rate), lambda w: w.nbytes)


def decode_audio(data: bytes, sample_rate: int = 16000) -> np.ndarray:
    """An uploaded sound file's bytes -> mono waveform (for graft serve)."""
    if not data:
        raise BadAudio("empty upload: no sound in it", "empty_audio")
    return _decode(io.BytesIO(data), "upload", sample_rate)


def audio_info(path: str | Path) -> dict[str, float]:
    """Duration (s), sample rate and channels from the file's header, without decoding it."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - an unreadable file has no statistics
        return {}
    return {"seconds": float(info.duration), "sample_rate": float(info.samplerate),
            "channels": float(info.channels)}


def fit_window(wave: np.ndarray, samples: int, start: int | None = None
               ) -> tuple[np.ndarray, int]:
    """Crop or pad ``wave`` to ``samples``: (window, how many samples of it are the clip's own).
    ``start`` picks the crop of a longer clip (None: the centre one)."""
    n = len(wave)
    if n >= samples:
        s = (n - samples) // 2 if start is None else int(np.clip(start, 0, n - samples))
        return np.ascontiguousarray(wave[s:s + samples], dtype=np.float32), samples
    out = np.zeros(samples, dtype=np.float32)
    out[:n] = wave
    return out, n


_FILTERS: dict[tuple[int, int, int], np.ndarray] = {}


def mel_filters(n_mels: int, n_fft: int, sample_rate: int) -> np.ndarray:
    """The Slaney-style mel filter bank ``(n_fft // 2 + 1, n_mels)`` Whisper uses (librosa's
    ``filters.mel`` with ``norm="slaney"``, as ``transformers.audio_utils.mel_filter_bank``)."""
    key = (n_mels, n_fft, sample_rate)
    if key in _FILTERS:
        return _FILTERS[key]
    n_freqs = n_fft // 2 + 1

    def hz_to_mel(f: np.ndarray) -> np.ndarray:  # Slaney: linear below 1 kHz, log above
        f = np.asarray(f, dtype=np.float64)
        mel = 3.0 * f / 200.0
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, mel)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)),
                        200.0 * m / 3.0)

    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    diff = np.diff(mel_pts)
    slopes = mel_pts[None, :] - fft_freqs[:, None]  # (freqs, n_mels + 2)
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))
    fb *= (2.0 / (mel_pts[2:n_mels + 2] - mel_pts[:n_mels]))[None, :]  # Slaney area norm
    _FILTERS[key] = fb.astype(np.float32)
    return _FILTERS[key]


def log_mel(wave: np.ndarray, dc: AudioDataConfig) -> np.ndarray:
    """Whisper's log-mel spectrogram ``(n_mels, dc.frames)`` of one window."""
    n_fft, hop = dc.n_fft, dc.hop_length
    padded = np.pad(np.asarray(wave, dtype=np.float32), n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    spec = np.abs(np.fft.rfft(padded[idx] * window, n=n_fft, axis=1)) ** 2  # (frames, freqs)
    mel = spec[:-1].astype(np.float32) @ mel_filters(dc.n_mels, n_fft, dc.sample_rate)
    logs = np.log10(np.maximum(mel, 1e-10)).T  # (n_mels, frames - 1)
    logs = np.maximum(logs, logs.max() - 8.0)
    out = ((logs + 4.0) / 4.0).astype(np.float32)
    frames = dc.frames
    if out.shape[1] < frames:  # an odd frame count: one more frame of the floor
        out = np.pad(out, ((0, 0), (0, frames - out.shape[1])), constant_values=out.min())
    return out[:, :frames]


def model_input(wave: np.ndarray, dc: AudioDataConfig, start: int | None = None
                ) -> tuple[np.ndarray, int]:
    """One clip -> (the frontend's input of its window, the clip's own length in input steps:
    spectrogram frames for ``log_mel``, samples for ``waveform``)."""
    window, own = fit_window(wave, dc.samples, start)
    if dc.frontend == "waveform":  # zero mean, unit variance over the clip's own samples, as
        clip = window[:own]         # Wav2Vec2FeatureExtractor(do_normalize=True) does
        window[:own] = (clip - clip.mean()) / np.sqrt(clip.var() + 1e-7)
        return window, own
    return log_mel(window, dc), min(dc.frames, max(1, -(-own // dc.hop_length)))


def choose_window(seconds: list[float], cap: float = 30.0) -> float:
    """A clip window for clips of these durations: the 99th percentile (1% of clips are
    cropped) rounded up to a quarter second, at least 0.5 s, at most ``cap`` (Whisper's 30 s)."""
    if not seconds:
        return min(1.0, cap)
    p99 = float(np.percentile(np.asarray(seconds, dtype=np.float64), 99))
    return float(min(cap, max(0.5, np.ceil(p99 * 4.0) / 4.0)))


def wave_stats(wave: np.ndarray, sample_rate: int) -> dict[str, float]:
    """The drift monitor's statistics of one decoded clip: duration, loudness, peak."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    return {"seconds": len(wave) / sample_rate,
            "rms_db": float(20 * np.log10(max(rms, 1e-10))),
            "peak": float(np.max(np.abs(wave))) if len(wave) else 0.0}


__all__ = ["AUDIO_EXTENSIONS", "AudioDataConfig", "BadAudio", "audio_info", "choose_window",
           "decode_audio", "fit_window", "load_audio", "log_mel", "mel_filters", "model_input",
           "resample", "wave_stats"]
