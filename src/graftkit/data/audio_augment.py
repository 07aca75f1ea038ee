"""Training augmentation for audio runs: waveform presets and SpecAugment masking, in numpy.

torchaudio has no build for the torch version graftkit pins, and audiomentations pulls its own
dependencies, so the few transforms the presets need are written here with numpy alone (no
torch): they run on one clip at a time in the data loader's workers.

Presets (:data:`AUDIO_AUGMENT_PRESETS`):

- ``none``: the clip unchanged;
- ``light``: a random time shift of up to 10% of the clip (zero fill) and a random gain of
  +-6 dB (uniform in dB);
- ``standard``: light, plus Gaussian noise at a random SNR of 10-40 dB (against the clip's RMS)
  with probability 0.5;
- ``strong``: shifts up to 20%, gain +-10 dB, noise at 5-30 dB with probability 0.8.

Gain may take a clip past [-1, 1]; it is not clipped, since clipping is a distortion of its own.
:func:`spec_augment` masks frequency bands and time spans of a log-mel spectrogram as in
Park et al. (2019), "SpecAugment" (Interspeech); :func:`spec_params` gives a preset's masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import numpy as np

from ..registry import Registry


@dataclass(frozen=True)
class AudioPreset:
    shift: float = 0.0  # largest time shift, as a fraction of the clip
    gain_db: float = 0.0  # gain drawn uniformly from [-gain_db, gain_db]
    noise_p: float = 0.0  # probability of adding noise
    snr_db: tuple[float, float] = (10.0, 40.0)  # the noise's SNR range
    freq_masks: int = 0
    freq_width: int = 0  # widest frequency mask, in mel bins
    time_masks: int = 0
    time_width: float = 0.0  # widest time mask, as a fraction of the frames


class SpecParams(TypedDict):
    """:func:`spec_augment`'s mask arguments, to pass as ``**spec_params(preset)``."""

    freq_masks: int
    freq_width: int
    time_masks: int
    time_width: float


AUDIO_AUGMENT_PRESETS: Registry[AudioPreset] = Registry("audio augmentation preset")
AUDIO_AUGMENT_PRESETS.register("none", "no augmentation")(AudioPreset())
AUDIO_AUGMENT_PRESETS.register("light", "time shift up to 10%, gain +-6 dB")(
    AudioPreset(shift=0.1, gain_db=6.0))
AUDIO_AUGMENT_PRESETS.register(
    "standard", "light + noise at 10-40 dB SNR (p=0.5); SpecAugment 2 x 8 bins, 2 x 10% frames")(
    AudioPreset(shift=0.1, gain_db=6.0, noise_p=0.5, snr_db=(10.0, 40.0),
                freq_masks=2, freq_width=8, time_masks=2, time_width=0.1))
AUDIO_AUGMENT_PRESETS.register(
    "strong", "shift 20%, gain +-10 dB, noise 5-30 dB (p=0.8); SpecAugment 3 x 12 bins, "
    "3 x 15% frames")(
    AudioPreset(shift=0.2, gain_db=10.0, noise_p=0.8, snr_db=(5.0, 30.0),
                freq_masks=3, freq_width=12, time_masks=3, time_width=0.15))


def _shift(wave: np.ndarray, k: int) -> np.ndarray:
    """``wave`` moved ``k`` samples later (earlier when negative), zeros filling the gap."""
    out = np.zeros_like(wave)
    if k >= 0:
        out[k:] = wave[:wave.size - k]
    else:
        out[:k] = wave[-k:]
    return out


def augment_wave(wave: np.ndarray, preset: str, rng: np.random.Generator) -> np.ndarray:
    """A randomly augmented copy of ``wave`` (1-D) under ``preset``: float32, same length."""
    p = AUDIO_AUGMENT_PRESETS.get(preset)
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        return x.copy()
    out = x.astype(np.float64)
    if p.shift:
        most = int(p.shift * x.size)
        out = _shift(out, int(rng.integers(-most, most + 1)))
    if p.gain_db:
        out = out * 10 ** (rng.uniform(-p.gain_db, p.gain_db) / 20)
    if p.noise_p and rng.random() < p.noise_p:
        rms = float(np.sqrt(np.mean(out ** 2)))
        out = out + rng.standard_normal(x.size) * rms * 10 ** (-rng.uniform(*p.snr_db) / 20)
    return out.astype(np.float32)


def spec_params(preset: str) -> SpecParams:
    """The SpecAugment masks of ``preset`` (none for ``none`` and ``light``), as keyword
    arguments of :func:`spec_augment`."""
    p = AUDIO_AUGMENT_PRESETS.get(preset)
    return SpecParams(freq_masks=p.freq_masks, freq_width=p.freq_width,
                      time_masks=p.time_masks, time_width=p.time_width)


def _mask_spans(rng: np.random.Generator, size: int, masks: int, width: int
                ) -> list[tuple[int, int]]:
    """``masks`` spans of 1..``width`` positions (at most ``size``) at random starts."""
    spans = []
    for _ in range(masks):
        w = int(rng.integers(1, min(width, size) + 1))
        start = int(rng.integers(0, size - w + 1))
        spans.append((start, start + w))
    return spans


def spec_augment(logmel: np.ndarray, rng: np.random.Generator, freq_masks: int, freq_width: int,
                 time_masks: int, time_width: float, fill: float | None = None) -> np.ndarray:
    """A copy of ``logmel`` (n_mels, frames) with ``freq_masks`` bands of 1..``freq_width`` mel
    bins and ``time_masks`` spans of 1..``time_width`` x frames (at least one frame) set to
    ``fill`` (default: the spectrogram's minimum, i.e. silence). Masks may overlap. Widths start
    at 1 rather than SpecAugment's 0, so a requested mask always masks something."""
    out = np.array(logmel, copy=True)
    if out.ndim != 2:
        raise ValueError(f"expected a (n_mels, frames) spectrogram, got shape {out.shape}")
    if out.size == 0:
        return out
    value = float(out.min()) if fill is None else fill
    n_mels, frames = out.shape
    if freq_width > 0:
        for a, b in _mask_spans(rng, n_mels, freq_masks, freq_width):
            out[a:b, :] = value
    if time_width > 0:
        widest = max(1, int(time_width * frames))
        for a, b in _mask_spans(rng, frames, time_masks, widest):
            out[:, a:b] = value
    return out
