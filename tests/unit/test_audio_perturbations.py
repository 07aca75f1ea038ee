"""Audio perturbations and augmentation on a real spoken digit: exact SNRs, harm growing with
severity, determinism, shapes, the filters' stop bands, the benchmark runner's counts, the
example figure, the training presets and SpecAugment's masks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from PIL import Image
from scipy import signal

from graftkit.data.audio_augment import (
    AUDIO_AUGMENT_PRESETS,
    augment_wave,
    spec_augment,
    spec_params,
)
from graftkit.errors import ConfigError
from graftkit.robustness.audio_perturbations import (
    ALL,
    AUDIO_FAMILY_SUBSET,
    AUDIO_PERTURBATIONS,
    SAMPLE_RATE,
    examples,
    perturb_wave,
    resolve_audio_perturbations,
    run_audio_perturbations,
)
from graftkit.robustness.plots import plot_audio_examples
from tests.conftest import shared_dataset

SEVS = [1, 2, 3, 4, 5]
RANDOM = ["white_noise", "background_noise", "reverb"]  # the perturbations that draw noise


def _read(name: str) -> np.ndarray:
    w, sr = sf.read(shared_dataset("fsdd") / name.split("_")[0] / name, dtype="float32")
    assert sr == 8000
    return soxr.resample(w, sr, SAMPLE_RATE).astype(np.float32)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return _read("3_george_7.wav")


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _log_spec(x: np.ndarray) -> np.ndarray:
    _, _, s = signal.stft(x, fs=SAMPLE_RATE, nperseg=512, noverlap=384)
    return 20 * np.log10(np.abs(s) + 1e-5)


def _distance(x: np.ndarray, clean: np.ndarray) -> float:
    """Mean absolute log-spectral difference in dB."""
    return float(np.mean(np.abs(_log_spec(x) - _log_spec(clean))))


def test_registry_and_resolve() -> None:
    assert set(ALL) == set(AUDIO_PERTURBATIONS.names())
    assert set(AUDIO_FAMILY_SUBSET) <= set(ALL)
    for name in ALL:
        assert len(AUDIO_PERTURBATIONS.get(name).params) == 5
        assert AUDIO_PERTURBATIONS.help(name)
    assert resolve_audio_perturbations("all") == ALL
    assert resolve_audio_perturbations(" Lowpass, reverb,lowpass") == ["lowpass", "reverb"]
    for bad in ("lowpas", "gaussian_noise", "", "reverb,,gain"):
        with pytest.raises(ConfigError) as err:
            resolve_audio_perturbations(bad)
        msg = str(err.value)
        assert "\n" not in msg and "all, white_noise" in msg and "reverb" in msg
    with pytest.raises(ConfigError):
        perturb_wave(np.zeros(100, np.float32), "nope", 1)
    for sev in (0, 6, 2.0):
        with pytest.raises(ConfigError):
            perturb_wave(np.zeros(100, np.float32), "gain", sev)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        perturb_wave(np.zeros((2, 100), np.float32), "gain", 1)


@pytest.mark.parametrize("name,targets", [("white_noise", (30, 20, 10, 5, 0)),
                                          ("background_noise", (20, 15, 10, 5, 0))])
def test_noise_snr_is_exact(clip: np.ndarray, name: str, targets: tuple[int, ...]) -> None:
    assert AUDIO_PERTURBATIONS.get(name).params == targets
    for sev, target in zip(SEVS, targets):
        for seed in (0, 1):
            out = perturb_wave(clip, name, sev, seed)
            snr = 10 * np.log10(_power(clip) / _power(out.astype(np.float64) - clip))
            assert abs(snr - target) < 0.5, (name, sev, snr)


def test_pink_noise_is_pink(clip: np.ndarray) -> None:
    noise = perturb_wave(clip, "background_noise", 5, 0).astype(np.float64) - clip
    f, p = signal.welch(noise, fs=SAMPLE_RATE, nperseg=1024)
    low, high = p[(f >= 100) & (f < 400)].mean(), p[(f >= 3200) & (f < 6400)].mean()
    assert 8 < low / high < 64  # 1/f: about 16 times the power per Hz, 16 times lower down


@pytest.mark.parametrize("name", ALL)
def test_harm_grows_with_severity(clip: np.ndarray, name: str) -> None:
    for seed in (0, 3):
        d = [_distance(perturb_wave(clip, name, s, seed, 5), clip) for s in SEVS]
        assert d[0] > 0.3 and all(a < b for a, b in zip(d, d[1:])), (name, d)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_shape_and_dtype(clip: np.ndarray, name: str) -> None:
    odd = clip[:7001].astype(np.float64)  # odd length, float64 in
    for wave in (clip, odd, clip[:300]):
        for sev in SEVS:
            out = perturb_wave(wave, name, sev, seed=4, index=2)
            assert out.dtype == np.float32 and out.shape == wave.shape
            assert np.isfinite(out).all()
            assert np.array_equal(out, perturb_wave(wave, name, sev, seed=4, index=2))
    a = perturb_wave(clip, name, 3, seed=0, index=0)
    others = [perturb_wave(clip, name, 3, seed=1, index=0),
              perturb_wave(clip, name, 3, seed=0, index=1)]
    for b in others:
        assert np.array_equal(a, b) == (name not in RANDOM)
    assert perturb_wave(clip[:0], name, 3).shape == (0,)


def test_silence_stays_silent() -> None:
    silent = np.zeros(4000, np.float32)
    for name in ALL:
        assert np.array_equal(perturb_wave(silent, name, 5), silent), name


def _energy_above(x: np.ndarray, hz: float) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    return float(spec[np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE) > hz].sum())


def test_lowpass_removes_energy_above_cutoff(clip: np.ndarray) -> None:
    cutoffs = AUDIO_PERTURBATIONS.get("lowpass").params
    assert list(cutoffs) == sorted(cutoffs, reverse=True)
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    for sev, cut in zip(SEVS, cutoffs):
        for wave in (clip, noise):
            if _energy_above(wave, 1.25 * cut) < 1e-3 * _energy_above(wave, 0):
                continue  # the 8 kHz recording has next to nothing above 4.4 kHz
            out = perturb_wave(wave, "lowpass", sev)
            assert _energy_above(out, 1.25 * cut) < 0.01 * _energy_above(wave, 1.25 * cut)
            # the pass band is kept: within 10% below half the cutoff
            kept = _energy_above(out, 0) - _energy_above(out, cut / 2)
            assert kept == pytest.approx(_energy_above(wave, 0) - _energy_above(wave, cut / 2),
                                         rel=0.1)


def test_telephone_band(clip: np.ndarray) -> None:
    for sev in SEVS:
        out = perturb_wave(clip, "telephone", sev)
        assert _energy_above(out, 4000) < 0.01 * _energy_above(out, 0)
        spec = np.abs(np.fft.rfft(out.astype(np.float64))) ** 2
        below = spec[np.fft.rfftfreq(out.size, 1 / SAMPLE_RATE) < 150].sum()
        assert below < 0.01 * spec.sum()


def test_clipping_bounds_the_peak(clip: np.ndarray) -> None:
    peak = np.abs(clip).max()
    for sev, fraction in zip(SEVS, AUDIO_PERTURBATIONS.get("clipping").params):
        out = perturb_wave(clip, "clipping", sev)
        assert np.abs(out).max() == pytest.approx(fraction * peak, rel=1e-6)
        inside = np.abs(clip) < fraction * peak
        assert np.array_equal(out[inside], clip[inside])


def test_speed_changes_duration(clip: np.ndarray) -> None:
    # a clip of silence | tone | silence: the tone's length scales with 1 / factor
    tone = np.zeros(16000, np.float32)
    tone[4000:12000] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / SAMPLE_RATE)
    for sev, factor in zip(SEVS, AUDIO_PERTURBATIONS.get("speed").params):
        out = perturb_wave(tone, "speed", sev)
        loud = np.flatnonzero(np.abs(out) > 0.25)
        assert (loud[-1] - loud[0]) == pytest.approx(8000 / factor, abs=40)
        f, p = signal.welch(out, fs=SAMPLE_RATE, nperseg=4096)
        assert f[p.argmax()] == pytest.approx(440 * factor, abs=8)


def test_reverb_keeps_loudness_and_smears(clip: np.ndarray) -> None:
    click = np.zeros(32000, np.float32)
    click[1000] = 1.0
    tails = []
    for sev in SEVS:
        out = perturb_wave(clip, "reverb", sev)
        assert _power(out) == pytest.approx(_power(clip), rel=1e-4)
        tails.append(np.abs(perturb_wave(click, "reverb", sev)[1200:]).sum())
    assert all(a < b for a, b in zip(tails, tails[1:]))


def _loud_predictor(seen: list[np.ndarray]):
    def predict(batch: list[np.ndarray]) -> np.ndarray:
        seen.extend(batch)
        loud = np.array([np.sqrt(_power(w)) > 0.02 for w in batch])
        return np.stack([loud, ~loud], axis=1).astype(np.float32)

    return predict


def test_run_audio_perturbations_counts(clip: np.ndarray) -> None:
    # three loud recordings and three of a quiet speaker, far below the 0.02 RMS threshold
    loud = [clip, _read("7_jackson_3.wav"), _read("5_jackson_3.wav")]
    quiet = [_read(f"{d}_theo_12.wav") for d in (0, 3, 6)]
    assert all(0.04 < np.sqrt(_power(w)) < 0.08 for w in loud)
    assert all(np.sqrt(_power(w)) < 0.006 for w in quiet)
    waves = loud + quiet
    targets = np.array([0, 0, 0, 1, 1, 1])
    seen: list[np.ndarray] = []
    steps: list[int] = []
    res = run_audio_perturbations(_loud_predictor(seen), waves, targets, ["gain", "white_noise"],
                                  [3, 1, 2], seed=7, batch_size=4, progress=steps.append)
    assert set(res) == {"clean_accuracy", "corruptions", "mca", "relative_robustness", "n",
                        "severities", "seed"}
    assert res["n"] == 6 and res["seed"] == 7 and res["severities"] == [1, 2, 3]
    assert res["clean_accuracy"] == 1.0
    # -6 dB keeps the loud clips above 0.02 RMS; -12 and -18 dB push them under
    assert res["corruptions"]["gain"]["severity"] == {"1": 1.0, "2": 0.5, "3": 0.5}
    assert res["corruptions"]["gain"]["mean"] == pytest.approx(2 / 3)
    assert res["corruptions"]["white_noise"]["severity"] == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert res["mca"] == pytest.approx(5 / 6)
    assert res["relative_robustness"] == pytest.approx(5 / 6)
    assert steps == [4, 2] * 7 and sum(steps) == 6 * (1 + 6)
    assert all(w.dtype == np.float32 and w.ndim == 1 for w in seen)
    assert [len(w) for w in seen[:6]] == [len(w) for w in waves]
    # each clip draws its own noise (its index), the same in every run
    assert np.array_equal(seen[6 * 4 + 3], perturb_wave(waves[3], "white_noise", 1, 7, 3))
    again = run_audio_perturbations(_loud_predictor([]), waves, targets,
                                    ["gain", "white_noise"], [1, 2, 3], seed=7, batch_size=64)
    assert again == res
    with pytest.raises(ConfigError):
        run_audio_perturbations(_loud_predictor([]), waves, targets, [], [1])
    with pytest.raises(ConfigError):
        run_audio_perturbations(_loud_predictor([]), waves, targets, ["gain"], [6])
    with pytest.raises(ValueError):
        run_audio_perturbations(_loud_predictor([]), waves, targets[:5], ["gain"], [1])


def test_examples_and_figure(clip: np.ndarray, tmp_path) -> None:
    names, sevs = ["white_noise", "lowpass", "reverb", "speed"], [1, 3, 5]
    shown = examples(clip, names, sevs, seed=2)
    assert list(shown) == names and all(list(by) == ["1", "3", "5"] for by in shown.values())
    assert np.array_equal(shown["reverb"]["5"], perturb_wave(clip, "reverb", 5, 2))
    path = plot_audio_examples(clip, SAMPLE_RATE, shown, tmp_path / "fig" / "audio.png")
    assert path.is_file() and path.stat().st_size > 20_000
    with Image.open(path) as im:
        assert im.width <= 1000 and im.height <= 600


def test_augment_presets(clip: np.ndarray) -> None:
    assert AUDIO_AUGMENT_PRESETS.names() == ["light", "none", "standard", "strong"]
    assert np.array_equal(augment_wave(clip, "none", np.random.default_rng(0)), clip)
    for preset in ("light", "standard", "strong"):
        outs = [augment_wave(clip, preset, np.random.default_rng(s)) for s in (0, 0, 1)]
        assert all(o.dtype == np.float32 and o.shape == clip.shape for o in outs)
        assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    with pytest.raises(ConfigError):
        augment_wave(clip, "heavy", np.random.default_rng(0))
    standard, strong = AUDIO_AUGMENT_PRESETS.get("standard"), AUDIO_AUGMENT_PRESETS.get("strong")
    assert strong.shift > standard.shift and strong.gain_db > standard.gain_db
    assert strong.snr_db[0] < standard.snr_db[0] and strong.noise_p > standard.noise_p


def test_light_is_a_shift_and_a_gain(clip: np.ndarray) -> None:
    most = int(0.1 * clip.size)
    x = clip.astype(np.float64)
    for seed in range(3):
        out = augment_wave(clip, "light", np.random.default_rng(seed)).astype(np.float64)
        best = None
        for k in range(-most, most + 1):
            ref = np.zeros_like(x)
            if k >= 0:
                ref[k:] = x[:x.size - k]
            else:
                ref[:k] = x[-k:]
            g = float(ref @ out) / float(ref @ ref)
            err = float(np.sum((out - g * ref) ** 2))
            if best is None or err < best[0]:
                best = (err, g, k)
        err, g, k = best
        assert err < 1e-8 * float(out @ out)
        assert abs(20 * np.log10(g)) <= 6 + 1e-6
        zeros = out[:k] if k > 0 else out[x.size + k:]
        assert np.all(zeros == 0)


def test_standard_adds_noise_half_the_time(clip: np.ndarray) -> None:
    # the shift's zero fill stays exactly zero unless noise was added
    noisy = [not np.any(augment_wave(clip, "standard", np.random.default_rng(s)) == 0)
             for s in range(60)]
    assert 18 <= sum(noisy) <= 42


def test_spec_augment_masks() -> None:
    rng = np.random.default_rng(0)
    logmel = rng.uniform(0, 1, (64, 100)).astype(np.float32)
    assert spec_params("none") == spec_params("light")
    assert spec_params("none") == {"freq_masks": 0, "freq_width": 0, "time_masks": 0,
                                   "time_width": 0.0}
    p = spec_params("standard")
    assert p == {"freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width": 0.1}
    q = spec_params("strong")
    assert q["freq_masks"] > p["freq_masks"] and q["time_width"] > p["time_width"]
    # the way the model adapter calls it
    for preset in ("none", "light"):
        assert np.array_equal(spec_augment(logmel, rng, **spec_params(preset), fill=0.0), logmel)
    masked = spec_augment(logmel, rng, **spec_params("strong"), fill=-1.0)
    assert (masked == -1).any()
    assert np.array_equal(spec_augment(logmel, rng, 0, 8, 0, 0.1), logmel)

    def runs(mask: np.ndarray) -> list[int]:
        edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
        return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))

    for seed in range(20):
        for masks in (1, 2, 3):
            out = spec_augment(logmel, np.random.default_rng(seed), masks, 8, masks, 0.1,
                               fill=-1.0)
            assert out.shape == logmel.shape and out.dtype == logmel.dtype
            rows, cols = (out == -1).all(axis=1), (out == -1).all(axis=0)
            for mask, width in ((rows, 8), (cols, 10)):
                r = runs(mask)
                assert 1 <= len(r) <= masks and 1 <= sum(r) <= masks * width
                if masks == 1:
                    assert r[0] <= width
            # outside the masks nothing changes
            keep = ~rows[:, None] & ~cols[None, :]
            assert np.array_equal(out[keep], logmel[keep]) and np.all(out[~keep] == -1)
    a = spec_augment(logmel, np.random.default_rng(5), 2, 8, 2, 0.1)
    assert np.array_equal(a, spec_augment(logmel, np.random.default_rng(5), 2, 8, 2, 0.1))
    assert a.min() == logmel.min() and (a == logmel.min()).sum() > 64  # default fill: minimum
