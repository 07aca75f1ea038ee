"""The audio adapter: a pretrained speech encoder (Whisper's encoder, or a waveform encoder such
as wav2vec2 / HuBERT / WavLM) with a pooled-feature head.

Every clip is cropped or padded to one window (``AudioDataConfig.window_s``, chosen from the
training clips' durations unless set): the encoder sees only the frames the data needs, never
Whisper's full 30 s (fsdd's digits are under a second: 30x less work). Whisper's encoder is run
on that shorter input with the first positions of its position table (transformers'
``WhisperEncoder.forward`` insists on 3000 frames, so the adapter runs its modules itself).
Features are the mean of the encoder states over the clip's own frames, not the silence it was
padded with, so a clip's features do not depend on what it shares a batch with.

Inputs are dicts ``{"input": (B, n_mels, frames) | (B, samples), "length": (B,)}`` (the clip's
own length in input steps), made per clip by :class:`AudioDataset`. A run directory carries
``audio_model/config.json`` (the encoder's config, no weights) so that ``rebuild_audio_model``
needs neither the hub nor the wheel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import run as rd
from ..data.audio import AudioDataConfig, BadAudio, load_audio, model_input
from ..data.spec import typed_target
from ..errors import ConfigError, DataError, GraftError
from ..registry import Registry
from .audio_builtin import AUDIO_BUILTINS, DEFAULT_AUDIO_MODEL, AudioBuiltin, load_builtin_encoder
from .base import HeadedAdapter

AUDIO_MODELS: Registry[AudioBuiltin] = Registry("audio model")
for _name, _spec in AUDIO_BUILTINS.items():
    AUDIO_MODELS.register(_name, _spec.help + (" (default)" if _name == DEFAULT_AUDIO_MODEL
                                               else ""))(_spec)

AUDIO_ASSETS = rd.AUDIO_ASSETS
WAVEFORM_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat")
AUDIO_NAME_HINTS = ("whisper", "wav2vec2", "hubert", "wavlm", "data2vec-audio")


class AudioDataset(Dataset):
    """``(path, target)`` pairs -> ``({"input", "length"}, target)``: decoded, resampled, (in
    training) augmented and randomly cropped, then the frontend's input (a log-mel spectrogram or
    the waveform). Unreadable files were skipped when the data was found; one that broke since
    is a DataError naming it."""

    def __init__(self, items: Sequence[tuple[str, float]], dc: AudioDataConfig, task: str,
                 augment: str = "none") -> None:
        self.items = [(str(p), typed_target(t, task)) for p, t in items]
        self.dc, self.augment = dc, augment

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        path, target = self.items[i]
        try:
            wave = load_audio(path, self.dc.sample_rate)
        except BadAudio as e:
            raise DataError(e.reason) from None
        # a tensor, as the image datasets give: a multi-label tuple collates to (B, K)
        return clip_input(wave, self.dc, self.augment), torch.tensor(target)


def clip_input(wave: np.ndarray, dc: AudioDataConfig, augment: str = "none",
               rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """One decoded clip -> the model's per-clip input. With an ``augment`` preset the waveform is
    augmented, the crop of a longer clip is random and SpecAugment masks the spectrogram."""
    start = None
    if augment != "none":
        from ..data.audio_augment import augment_wave, spec_augment, spec_params

        rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        wave = augment_wave(wave, augment, rng)
        start = int(rng.integers(0, max(1, len(wave) - dc.samples + 1)))
    x, length = model_input(wave, dc, start)
    if augment != "none" and dc.frontend == "log_mel":
        x = spec_augment(x, rng, **spec_params(augment), fill=float(x.min()))
    return {"input": torch.from_numpy(np.ascontiguousarray(x)), "length": torch.tensor(length)}


def stack_inputs(clips: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"input": torch.stack([c["input"] for c in clips]),
            "length": torch.stack([c["length"] for c in clips])}


class AudioAdapter(HeadedAdapter):
    """``backbone``: a ``WhisperEncoder`` (``frontend == "log_mel"``) or a transformers waveform
    encoder; ``head`` maps pooled ``(B, F)`` features to ``(B, K)``."""

    modality = "audio"
    collate = None  # torch's default collation stacks the per-clip dicts

    def __init__(self, backbone: nn.Module, num_outputs: int, dropout: float,
                 data_config: AudioDataConfig) -> None:
        super().__init__()
        self.backbone = backbone
        cfg = backbone.config
        self.num_features = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
        self._data_config = data_config
        self.head = self._make_head(num_outputs, dropout)

    @property
    def max_seconds(self) -> float:
        """The longest window the encoder takes (Whisper: its position table, 30 s)."""
        dc = self._data_config
        if dc.frontend == "log_mel":
            positions = int(self.backbone.config.max_source_positions)
            return positions * 2 * dc.hop_length / dc.sample_rate
        return 30.0

    def states(self, x: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states ``(B, T, F)`` and a mask ``(B, T)`` of the clip's own positions."""
        inp, length = x["input"], x["length"]
        if self._data_config.frontend == "log_mel":
            enc = self.backbone
            h = nn.functional.gelu(enc.conv1(inp.to(enc.conv1.weight.dtype)))
            h = nn.functional.gelu(enc.conv2(h)).permute(0, 2, 1)  # (B, T, F), T = frames / 2
            h = h + enc.embed_positions.weight[: h.shape[1]]
            h = nn.functional.dropout(h, p=enc.dropout, training=self.training)
            for layer in enc.layers:
                h = layer(h, None)
                h = h[0] if isinstance(h, tuple) else h
            h = enc.layer_norm(h)
            own = torch.div(length + 1, 2, rounding_mode="floor")
        else:
            h = self.backbone(input_values=inp).last_hidden_state
            own = self.backbone._get_feat_extract_output_lengths(length)
        steps = torch.arange(h.shape[1], device=h.device)
        return h, steps[None, :] < own.clamp(min=1)[:, None]

    def features(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        h, mask = self.states(x)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, F)

    def make_dataset(self, items: Sequence[tuple[str, float]], task: str,
                     augment: str = "none") -> Dataset:
        return AudioDataset(items, self._data_config, task, augment)

    def prepare(self, wave: np.ndarray) -> dict[str, torch.Tensor]:
        """One decoded clip -> its model input, as for evaluation (the centre window)."""
        return clip_input(wave, self._data_config)

    def input_signature(self) -> str:
        """What the features depend on besides weights and data (a feature-cache key part)."""
        return "audio|" + json.dumps(self._data_config.to_dict(), sort_keys=True)

    def set_window(self, seconds: float) -> None:
        if seconds > self.max_seconds + 1e-9:
            raise ConfigError(f"config key 'model.clip_seconds': {seconds} s is longer than the "
                              f"encoder's {self.max_seconds:g} s")
        self._data_config = replace(self._data_config, window_s=float(seconds))

    def _layers(self) -> str:
        """The encoder's list of transformer layers: the one as long as the config says (a
        wav2vec2's ``feature_extractor.conv_layers`` comes first and is not it), else the last."""
        cfg = getattr(self.backbone, "config", None)
        n_cfg = getattr(cfg, "encoder_layers", None) or getattr(cfg, "num_hidden_layers", None)
        lists = [(name, len(m)) for name, m in self.named_modules()
                 if isinstance(m, nn.ModuleList) and name.startswith("backbone.")
                 and name.endswith("layers")]
        if not lists:
            raise GraftError(f"{type(self.backbone).__name__} has no list of layers to group")
        matching = [nm for nm, k in lists if k == n_cfg]
        return (matching[-1] if matching else lists[-1][0]) + "."

    def blocks(self) -> list[list[str]]:
        """Backbone parameter names, input -> output: [the convolutional front and position
        table] + one group per encoder layer + [the final norm]."""
        prefix = self._layers()
        before: list[str] = []
        layers: dict[int, list[str]] = {}
        after: list[str] = []
        for name, _ in self.named_parameters():
            if not name.startswith("backbone."):
                continue
            if name.startswith(prefix):
                layers.setdefault(int(name[len(prefix):].split(".", 1)[0]), []).append(name)
            else:
                (after if layers else before).append(name)
        return [g for g in (before, *(layers[i] for i in sorted(layers)), after) if g]

    @property
    def data_config(self) -> AudioDataConfig:
        return self._data_config

    @property
    def explain_layer(self) -> nn.Module:
        """The first convolution over the log-mel input (occlusion needs no layer; this is what
        a gradient method would read)."""
        return getattr(self.backbone, "conv1", self.backbone)


def _local_dir(name: str) -> Path | None:
    p = Path(name).expanduser()
    if not p.is_dir():
        return None
    if not (p / "config.json").is_file():
        raise ConfigError(f"config key 'model.name': directory {str(p)!r} has no config.json "
                          "(expected a Hugging Face model directory)")
    return p


def _model_type(config: Any) -> str:
    return str(getattr(config, "model_type", ""))


def _encoder_of(model: nn.Module) -> nn.Module:
    """Whisper's encoder out of a whole Whisper model; a waveform encoder as it is."""
    if _model_type(model.config) == "whisper" and hasattr(model, "get_encoder"):
        return model.get_encoder()
    return model


def _hub_encoder(name: str, pretrained: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    local = _local_dir(name)
    source = str(local) if local else name
    try:
        config = AutoConfig.from_pretrained(source)
        if _model_type(config) == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            if pretrained:
                from transformers import WhisperModel

                return WhisperModel.from_pretrained(source).get_encoder()
            return WhisperEncoder(config)
        model = AutoModel.from_pretrained(source) if pretrained else AutoModel.from_config(config)
    except Exception as e:  # noqa: BLE001 - hub and file errors come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if local:
            raise GraftError(f"cannot load the audio model in {name!r}: {first}") from None
        raise GraftError(f"could not load {name!r} from the Hugging Face hub "
                         f"({type(e).__name__}): this needs a network; with none, use the "
                         f"built-in {DEFAULT_AUDIO_MODEL} or a local model directory") from None
    return _encoder_of(model)


def _frontend(backbone: nn.Module) -> dict[str, Any]:
    cfg = backbone.config
    if _model_type(cfg) == "whisper":
        return {"frontend": "log_mel", "n_mels": int(cfg.num_mel_bins)}
    if _model_type(cfg) in WAVEFORM_TYPES:
        return {"frontend": "waveform"}
    raise ConfigError(f"config key 'model.name': a {_model_type(cfg) or 'model'} encoder is not "
                      "an audio encoder graftkit can feed (Whisper, wav2vec2, HuBERT, WavLM)")


def create_audio_model(name: str, num_outputs: int, *, pretrained: bool = True,
                       dropout: float = 0.1, clip_seconds: float = 1.0) -> AudioAdapter:
    """An audio encoder + new head: a built-in name, a local Hugging Face directory or a hub
    name. ``pretrained=False``: the same architecture, randomly initialised."""
    if name in AUDIO_BUILTINS:
        backbone: nn.Module = load_builtin_encoder(name, pretrained)
    else:
        backbone = _hub_encoder(name, pretrained)
    adapter = AudioAdapter(backbone, num_outputs, dropout,
                           AudioDataConfig(window_s=1.0, **_frontend(backbone)))
    adapter.set_window(clip_seconds)
    return adapter


def save_audio_assets(adapter: AudioAdapter, run_dir: str | Path) -> Path:
    """Write ``RUN_DIR/audio_model/config.json``: the encoder's config (no weights)."""
    out = Path(run_dir) / AUDIO_ASSETS
    out.mkdir(parents=True, exist_ok=True)
    adapter.backbone.config.save_pretrained(out)
    return out


def rebuild_audio_model(num_outputs: int, dropout: float, data_config: AudioDataConfig,
                        run_dir: str | Path) -> AudioAdapter:
    """The architecture of a saved run (random weights: the run's own are loaded next)."""
    from transformers import AutoConfig, AutoModel

    assets = Path(run_dir) / AUDIO_ASSETS
    if not (assets / "config.json").is_file():
        raise GraftError(f"run {str(run_dir)!r} has no {AUDIO_ASSETS}/config.json: it cannot "
                         "rebuild its audio model")
    try:
        config = AutoConfig.from_pretrained(str(assets))
        if _model_type(config) == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            backbone: nn.Module = WhisperEncoder(config)
        else:
            backbone = AutoModel.from_config(config)
    except Exception as e:  # noqa: BLE001 - a damaged run directory
        raise GraftError(f"cannot rebuild the audio model of {str(run_dir)!r}: {e}") from None
    return AudioAdapter(backbone, num_outputs, dropout, data_config)


def is_audio_model(name: str) -> bool:
    """A built-in audio name, a local directory whose config is an audio encoder's, or a hub
    name containing whisper / wav2vec2 / hubert / wavlm / data2vec-audio."""
    if name in AUDIO_MODELS:
        return True
    p = Path(name).expanduser()
    if p.is_dir():
        try:
            kind = json.loads((p / "config.json").read_text()).get("model_type", "")
        except (OSError, ValueError, AttributeError):
            return False
        return kind == "whisper" or kind in WAVEFORM_TYPES
    return any(h in name.lower() for h in AUDIO_NAME_HINTS)
