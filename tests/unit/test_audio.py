"""Audio decoding, the log-mel frontend, the converted Whisper encoder and the audio adapter, on
real spoken digits (../shared/data/fsdd)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from graftkit.data.audio import (
    AudioDataConfig,
    BadAudio,
    choose_window,
    decode_audio,
    fit_window,
    load_audio,
    log_mel,
    model_input,
)
from tests.conftest import shared_dataset


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(shared_dataset("fsdd") / "3" / "3_george_7.wav")  # 8 kHz file -> 16 kHz


@pytest.fixture(scope="module")
def encoder_model():  # noqa: ANN201 - an AudioAdapter
    from graftkit.models.audio import create_audio_model

    torch.manual_seed(0)
    return create_audio_model("whisper-tiny.en", 3, clip_seconds=1.0).eval()


def test_decoding_resamples_and_downmixes(clip: np.ndarray, tmp_path) -> None:  # noqa: ANN001
    native, rate = sf.read(shared_dataset("fsdd") / "3" / "3_george_7.wav", dtype="float32")
    assert rate == 8000 and clip.dtype == np.float32
    assert len(clip) == 2 * len(native)  # 16 kHz
    # a stereo 44.1 kHz 24-bit file and an 8 kHz 8-bit one decode to (nearly) the same sound
    import soxr

    at44 = soxr.resample(native, 8000, 44100)
    sf.write(tmp_path / "st.wav", np.stack([at44, at44], 1), 44100, subtype="PCM_24")
    sf.write(tmp_path / "u8.wav", native, 8000, subtype="PCM_U8")
    sf.write(tmp_path / "c.flac", native, 8000)
    stereo, u8, flac = (load_audio(tmp_path / n) for n in ("st.wav", "u8.wav", "c.flac"))
    n = min(len(clip), len(stereo))
    assert abs(len(stereo) - len(clip)) <= 2
    assert np.corrcoef(stereo[:n], clip[:n])[0, 1] > 0.99
    assert np.corrcoef(u8, clip)[0, 1] > 0.95  # 8 bits: quantisation noise, same sound
    assert np.abs(flac - clip).max() < 1e-3
    assert np.array_equal(decode_audio((tmp_path / "c.flac").read_bytes()), flac)


@pytest.mark.parametrize("content,code", [(b"", "empty_audio"), (b"RIFF\0\0\0\0WAVEjunk",
                                                                  "bad_audio"),
                                          (b"\x89PNG\r\n\x1a\n" + b"0" * 64, "bad_audio")])
def test_unusable_files_are_bad_audio(tmp_path, content: bytes, code: str) -> None:  # noqa: ANN001
    f = tmp_path / "x.wav"
    f.write_bytes(content)
    with pytest.raises(BadAudio) as e:
        load_audio(f)
    assert e.value.code == code and str(f) in e.value.reason and "\n" not in e.value.reason
    assert "0x" not in e.value.reason  # no object reprs from soundfile
    silent = tmp_path / "short.wav"
    sf.write(silent, np.zeros(4, dtype=np.float32), 16000)
    with pytest.raises(BadAudio, match="no sound"):
        load_audio(silent)


def test_log_mel_is_whispers(clip: np.ndarray) -> None:
    from transformers import WhisperFeatureExtractor

    dc = AudioDataConfig(window_s=1.0)
    window, own = fit_window(clip, dc.samples)
    ours = log_mel(window, dc)
    ref = WhisperFeatureExtractor()(window, sampling_rate=16000,
                                    return_tensors="np").input_features[0]  # padded to 30 s
    assert ours.shape == (80, 100) and own == len(clip)
    # identical but for the last frames, where Whisper's 30 s padding continues the window
    assert np.abs(ours[:, :98] - ref[:, :98]).max() < 1e-4


def test_windows_crop_and_pad(clip: np.ndarray) -> None:
    long = np.concatenate([clip, clip, clip])
    centre, own = fit_window(long, 16000)
    assert len(centre) == 16000 and own == 16000
    s = (len(long) - 16000) // 2
    assert np.array_equal(centre, long[s:s + 16000])
    padded, own = fit_window(clip[:4000], 16000)
    assert own == 4000 and not padded[4000:].any()
    x, frames = model_input(clip[:4000], AudioDataConfig(window_s=1.0))
    assert x.shape == (80, 100) and frames == 25
    assert choose_window([0.4] * 50 + [0.92] * 50) == 1.0 and choose_window([0.4] * 9) == 0.5
    assert choose_window([12.0, 40.0]) == 30.0 and choose_window([0.1]) == 0.5


def test_converted_encoder_matches_ctranslate2(clip: np.ndarray) -> None:
    """The built-in's weights, converted from CTranslate2 into transformers' WhisperEncoder,
    give CTranslate2's own encoder output on a real clip (30 s input, as CTranslate2 takes)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperFeatureExtractor

    from graftkit.models.audio_builtin import builtin_file, load_builtin_encoder

    feats = WhisperFeatureExtractor()(clip, sampling_rate=16000,
                                      return_tensors="np").input_features
    with torch.no_grad():
        ours = load_builtin_encoder("whisper-tiny.en")(torch.from_numpy(feats)).last_hidden_state
    ct2 = ctranslate2.models.Whisper(str(builtin_file("whisper-tiny.en").parent), device="cpu",
                                     compute_type="float32")
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    assert ours.shape == ref.shape == (1, 1500, 384)
    assert np.abs(ours.numpy() - ref).max() < 2e-3  # |values| up to ~12


def test_adapter_sees_only_the_window_and_pools_own_frames(encoder_model, clip) -> None:  # noqa: ANN001
    from graftkit.models.audio import stack_inputs

    m = encoder_model
    x = m.prepare(clip)
    assert tuple(x["input"].shape) == (80, 100)  # 1 s of frames, not Whisper's 3000
    other = m.prepare(np.random.default_rng(0).normal(0, 0.3, 16000).astype(np.float32))
    with torch.no_grad():
        alone = m.features(stack_inputs([x]))
        beside = m.features(stack_inputs([x, other]))
        h, mask = m.states(stack_inputs([x]))
    assert torch.allclose(alone[0], beside[0], atol=1e-5)  # no batch dependence
    assert h.shape[1] == 50 and int(mask.sum()) == (int(x["length"]) + 1) // 2
    # the short-window forward is the encoder's own on the same frames (first 50 positions)
    blocks = m.blocks()
    assert len(blocks) == 6  # convolutions + positions, 4 layers, the final norm
    assert all(n.startswith("backbone.layers.2.") for n in blocks[3])


def test_waveform_encoder_from_a_local_directory(tmp_path, clip) -> None:  # noqa: ANN001
    """A Hugging Face waveform encoder (a tiny random wav2vec2 saved locally) trains through the
    same adapter: normalised samples in, features pooled over the clip's own frames."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from graftkit.models.audio import create_audio_model, is_audio_model, stack_inputs

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                         conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                         num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(cfg).save_pretrained(tmp_path / "w2v")
    assert is_audio_model(str(tmp_path / "w2v"))
    m = create_audio_model(str(tmp_path / "w2v"), 2, clip_seconds=1.0).eval()
    assert m.data_config.frontend == "waveform"
    x = stack_inputs([m.prepare(clip)])
    assert abs(float(x["input"][0, : int(x["length"][0])].std()) - 1.0) < 0.01
    with torch.no_grad():
        assert m(x).shape == (1, 2)
    assert len(m.blocks()) >= 3


@pytest.mark.parametrize("task, targets, shape, dtype", [
    ("multilabel", [(1.0, 0.0, 1.0), (0.0, 1.0, 1.0)], (2, 3), torch.float32),
    ("classification", [2, 0], (2,), torch.int64),
    ("regression", [0.5, 1.5], (2,), torch.float32)])
def test_a_batch_of_clips_has_one_target_tensor(task: str, targets: list, shape: tuple,
                                                dtype: torch.dtype) -> None:
    from torch.utils.data import default_collate

    from graftkit.models.audio import AudioDataset

    files = [shared_dataset("fsdd") / "3" / f"3_george_{i}.wav" for i in (7, 8)]
    ds = AudioDataset(list(zip(map(str, files), targets)), AudioDataConfig(window_s=1.0), task)
    x, y = default_collate([ds[0], ds[1]])
    assert x["input"].shape[0] == 2 and y.shape == shape and y.dtype == dtype


def test_a_wav2vec2_encoder_is_grouped_by_its_transformer_layers() -> None:
    """Not by its convolutional front (feature_extractor.conv_layers, the first list of
    layers): last_n=1 trains the last transformer layer only."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from graftkit.models.audio import AudioAdapter
    from graftkit.train.loop import set_trainable

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=64, conv_dim=(16,) * 7, num_conv_pos_embeddings=16)
    a = AudioAdapter(Wav2Vec2Model(cfg), 3, 0.1, AudioDataConfig(window_s=1.0,
                                                                frontend="waveform"))
    assert a._layers() == "backbone.encoder.layers."
    set_trainable(a, 1)
    trained = {n.split("encoder.layers.")[1].split(".")[0] for n, p in a.named_parameters()
               if p.requires_grad and "encoder.layers." in n}
    assert trained == {"3"}
