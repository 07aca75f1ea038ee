"""Audio perturbations for audio runs: the audio counterpart of the image corruptions and the text
perturbations. Noise, channel and room effects, each at five severities as in Hendrycks &
Dietterich (2019)'s corruption benchmark.

Waveforms are 1-D float32 arrays at :data:`SAMPLE_RATE` (16 kHz), roughly in [-1, 1]. Each
perturbation has five parameters, one per severity 1-5, of increasing harm (``.params``):

- ``white_noise``: additive Gaussian noise at an SNR of 30, 20, 10, 5, 0 dB against the clip's
  own RMS (the noise is scaled to the exact target power, so the SNR is exact);
- ``background_noise``: pink (1/f power) noise, shaped from Gaussian noise in the frequency
  domain, at 20, 15, 10, 5, 0 dB SNR; it masks the low frequencies where speech lives;
- ``lowpass``: Butterworth low-pass (order 6, run forwards and backwards with ``sosfiltfilt``,
  so zero phase) at 3500, 2500, 1500, 1000, 500 Hz;
- ``telephone``: a narrow-band phone line: Butterworth band-pass (order 4, zero phase), then at
  severities 2-5 the signal is resampled to 8 kHz, mu-law companded (mu = 255, full scale 1.0)
  and quantised to 8, 6, 5, 4 bits (8 bits is G.711), and resampled back to 16 kHz. The bands
  are 300-3400 Hz at 1-3, 400-3000 Hz at 4, 500-2500 Hz at 5;
- ``clipping``: hard clipping at 0.5, 0.3, 0.2, 0.1, 0.05 of the clip's peak;
- ``speed``: played faster or slower by 1.05, 1/1.08, 1.12, 1/1.18, 1.25 (tape-style, via
  ``resample_poly``: pitch moves with the speed), then zero-padded or cropped around the centre
  back to the original length, so the model input keeps its size;
- ``reverb``: convolution with a synthetic room response: a direct path of 1 followed by an
  exponentially decaying Gaussian-noise tail reaching -60 dB at RT60 = 0.2, 0.4, 0.6, 0.9,
  1.2 s. The tail's energy grows with RT60 as in a real room (equal to the direct path's at
  0.5 s); the output keeps the clip's RMS and length (the tail past the end is cut);
- ``gain``: attenuation by 6, 12, 18, 24, 30 dB (a far or quiet recording; a model that
  normalises loudness is unaffected by design).

A silent clip gets no noise from the two noise perturbations: their SNR is measured against a
signal power of zero.

Determinism: :func:`perturb_wave` draws from ``np.random.default_rng(cell_seed(seed, index,
name, severity))`` (:func:`graftkit.robustness.bench.cell_seed`), so the same clip at the same
position of the evaluation set, under the same cell and seed, always gives the same waveform,
whatever the batch size. The filters, clipping, speed and gain use no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from scipy import signal

from ..errors import ConfigError
from ..registry import Registry
from .bench import cell_seed, check_inputs, decisions, hits, summarize
from .corruptions import SEVERITIES

SAMPLE_RATE = 16_000

Wave = np.ndarray
AudioPerturbFn = Callable[[Wave, Any, np.random.Generator], Wave]
PredictAudioProbs = Callable[[list[Wave]], np.ndarray]


@dataclass(frozen=True)
class AudioPerturbation:
    fn: AudioPerturbFn  # (wave, parameter, rng) -> wave
    params: tuple[Any, ...]  # one parameter per severity 1-5


AUDIO_PERTURBATIONS: Registry[AudioPerturbation] = Registry("audio perturbation")
# The robust search objective's fast set: one per family (noise, channel, room).
AUDIO_FAMILY_SUBSET = ("white_noise", "lowpass", "reverb")


def _register(name: str, help: str, params: tuple[Any, ...]
              ) -> Callable[[AudioPerturbFn], AudioPerturbFn]:
    def deco(fn: AudioPerturbFn) -> AudioPerturbFn:
        AUDIO_PERTURBATIONS.register(name, help)(AudioPerturbation(fn, params))
        return fn

    return deco


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _at_snr(wave: Wave, noise: np.ndarray, snr_db: float) -> Wave:
    """``wave`` plus ``noise`` scaled to exactly ``snr_db`` below the clip's RMS."""
    signal_rms, noise_rms = _rms(wave), _rms(noise)
    if signal_rms == 0 or noise_rms == 0:
        return wave
    return wave + noise * (signal_rms / noise_rms * 10 ** (-snr_db / 20))


def _filtfilt(sos: np.ndarray, wave: Wave) -> Wave:
    """Zero-phase filtering; short clips get a shorter edge padding than scipy's default."""
    padlen = min(3 * (2 * len(sos) + 1), wave.size - 1)
    return signal.sosfiltfilt(sos, wave, padlen=max(padlen, 0))


def _fit(wave: Wave, n: int) -> Wave:
    """``wave`` zero-padded or cropped to ``n`` samples, keeping its centre in place."""
    if wave.size >= n:
        start = (wave.size - n) // 2
        return wave[start:start + n]
    left = (n - wave.size) // 2
    return np.pad(wave, (left, n - wave.size - left))


@_register("white_noise", "Gaussian noise at 30, 20, 10, 5, 0 dB SNR", (30, 20, 10, 5, 0))
def white_noise(wave: Wave, snr_db: float, rng: np.random.Generator) -> Wave:
    return _at_snr(wave, rng.standard_normal(wave.size), snr_db)


@_register("background_noise", "pink (1/f) noise at 20, 15, 10, 5, 0 dB SNR", (20, 15, 10, 5, 0))
def background_noise(wave: Wave, snr_db: float, rng: np.random.Generator) -> Wave:
    spectrum = np.fft.rfft(rng.standard_normal(wave.size))
    freqs = np.fft.rfftfreq(wave.size)
    spectrum[1:] /= np.sqrt(freqs[1:])  # power ~ 1/f
    spectrum[0] = 0.0
    return _at_snr(wave, np.fft.irfft(spectrum, n=wave.size), snr_db)


@_register("lowpass", "Butterworth low-pass at 3500, 2500, 1500, 1000, 500 Hz",
           (3500, 2500, 1500, 1000, 500))
def lowpass(wave: Wave, cutoff_hz: float, rng: np.random.Generator) -> Wave:
    return _filtfilt(signal.butter(6, cutoff_hz, "lowpass", fs=SAMPLE_RATE, output="sos"), wave)


MU = 255  # mu-law's mu, as in G.711


def _mu_law(wave: Wave, bits: int) -> Wave:
    """Mu-law compand, quantise to ``2**(bits-1)`` steps each side of zero (full scale 1.0;
    2**bits + 1 levels with zero, one more than a ``bits``-bit code) and expand back."""
    x = np.clip(wave, -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / math.log1p(MU)
    levels = 2 ** (bits - 1)
    y = np.round(y * levels) / levels
    return np.sign(y) * np.expm1(np.abs(y) * math.log1p(MU)) / MU


@_register("telephone", "phone band-pass 300-3400 Hz, then 8 kHz mu-law at 8, 6, 5, 4 bits",
           ((300, 3400, 0), (300, 3400, 8), (300, 3400, 6), (400, 3000, 5), (500, 2500, 4)))
def telephone(wave: Wave, band: tuple[float, float, int], rng: np.random.Generator) -> Wave:
    low, high, bits = band
    out = _filtfilt(signal.butter(4, (low, high), "bandpass", fs=SAMPLE_RATE, output="sos"), wave)
    if bits:
        narrow = signal.resample_poly(out, 1, 2)  # 16 kHz -> 8 kHz
        out = _fit(signal.resample_poly(_mu_law(narrow, bits), 2, 1), wave.size)
    return out


@_register("clipping", "hard clipping at 0.5, 0.3, 0.2, 0.1, 0.05 of the peak",
           (0.5, 0.3, 0.2, 0.1, 0.05))
def clipping(wave: Wave, fraction: float, rng: np.random.Generator) -> Wave:
    limit = fraction * float(np.max(np.abs(wave), initial=0.0))
    return np.clip(wave, -limit, limit)


@_register("speed", "faster or slower by 1.05, 1/1.08, 1.12, 1/1.18, 1.25 (pitch follows)",
           (1.05, 1 / 1.08, 1.12, 1 / 1.18, 1.25))
def speed(wave: Wave, factor: float, rng: np.random.Generator) -> Wave:
    ratio = Fraction(factor).limit_denominator(100)  # played `factor` times as fast
    return _fit(signal.resample_poly(wave, ratio.denominator, ratio.numerator), wave.size)


# the decaying tail's energy is RT60 in seconds (0.5 at 0.5 s, 1.2 at 1.2 s) against the direct
# path's 1: sum(ir**2) = std**2 * fs * rt60 / (6 ln 10)
REVERB_TAIL_STD = math.sqrt(3 * math.log(10) / (SAMPLE_RATE * 0.5))


@_register("reverb", "synthetic room response with RT60 0.2, 0.4, 0.6, 0.9, 1.2 s",
           (0.2, 0.4, 0.6, 0.9, 1.2))
def reverb(wave: Wave, rt60: float, rng: np.random.Generator) -> Wave:
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    # amplitude exp(-a t) is -60 dB at rt60: a = 3 ln(10) / rt60
    ir = REVERB_TAIL_STD * rng.standard_normal(t.size) * np.exp(-3 * math.log(10) * t / rt60)
    ir[0] = 1.0  # the direct path
    out = signal.fftconvolve(wave, ir)[:wave.size]
    wet = _rms(out)
    return out * (_rms(wave) / wet) if wet > 0 else out


@_register("gain", "attenuation by 6, 12, 18, 24, 30 dB", (-6, -12, -18, -24, -30))
def gain(wave: Wave, gain_db: float, rng: np.random.Generator) -> Wave:
    return wave * 10 ** (gain_db / 20)


ALL = ["white_noise", "background_noise", "lowpass", "telephone", "clipping", "speed", "reverb",
       "gain"]


def perturb_wave(wave: Wave, name: str, severity: int, seed: int = 0, index: int = 0) -> Wave:
    """``wave`` (1-D, 16 kHz) with perturbation ``name`` at ``severity`` 1-5, as float32 of the
    same length; a pure function of its arguments. ``index`` is the clip's position in the
    evaluation set, so that every clip draws its own noise."""
    p = AUDIO_PERTURBATIONS.get(name)
    if not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise ConfigError(f"perturbation severity must be an integer 1-5, got {severity!r}")
    x = np.asarray(wave, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        return x.astype(np.float32)
    rng = np.random.default_rng(cell_seed(seed, index, name, int(severity)))
    return p.fn(x, p.params[severity - 1], rng).astype(np.float32)


def resolve_audio_perturbations(spec: str) -> list[str]:
    """Names from ``all`` or a comma list of names (order kept, duplicates dropped)."""
    names: list[str] = []
    for raw in str(spec).split(","):
        item = raw.strip().lower()
        if item == "all":
            names += ALL
        elif item in AUDIO_PERTURBATIONS:
            names.append(item)
        else:
            what = (f"unknown audio perturbation {item!r}" if item
                    else f"empty perturbation list {spec!r}")
            raise ConfigError(f"{what}; audio runs choose from: all, {', '.join(ALL)}")
    return list(dict.fromkeys(names))


def run_audio_perturbations(predict_probs: PredictAudioProbs, waves: Sequence[Wave],
                            targets: np.ndarray, names: list[str], severities: list[int],
                            seed: int = 0, batch_size: int = 64,
                            progress: Callable[[int], None] | None = None,
                            decide: Callable[[np.ndarray], np.ndarray] | None = None
                            ) -> dict[str, Any]:
    """Accuracy of ``predict_probs`` (list of waveforms -> (N, K) probabilities) on clean and
    perturbed copies of ``waves``; ``targets`` holds the N true class indices. Perturbing is
    cheap next to the model, so it happens here, batch by batch. ``progress(k)`` is called
    after each batch of k clips; the total is ``n * (1 + cells)``. Returns the dict of
    :func:`graftkit.robustness.bench.summarize` (perturbations under ``corruptions``)."""
    resolved = resolve_audio_perturbations(",".join(names)) if names else []
    sevs, targets = check_inputs("perturbation", "clip", resolved, names, severities, len(waves),
                                 targets, batch_size)
    n = len(waves)

    def score(batch: list[Wave], start: int) -> int:
        k = hits(decisions(predict_probs, batch, decide, "clips"),
                 targets[start:start + len(batch)])
        if progress is not None:
            progress(len(batch))
        return k

    clips = [np.asarray(w, dtype=np.float32) for w in waves]
    clean = sum(score(clips[s:s + batch_size], s) for s in range(0, n, batch_size))
    correct = {name: dict.fromkeys(sevs, 0) for name in resolved}
    for name in resolved:
        for sev in sevs:
            for s in range(0, n, batch_size):
                batch = [perturb_wave(w, name, sev, seed, s + i)
                         for i, w in enumerate(clips[s:s + batch_size])]
                correct[name][sev] += score(batch, s)
    return summarize(correct, clean, n, sevs, seed)


def examples(wave: Wave, names: list[str], severities: list[int], seed: int = 0,
             index: int = 0) -> dict[str, dict[str, Wave]]:
    """One clip as each perturbation leaves it at each severity (for the report's figure):
    ``{name: {severity: wave}}``, severities as strings as in the text examples."""
    return {name: {str(s): perturb_wave(wave, name, s, seed, index) for s in severities}
            for name in names}
