"""Typed configuration tree.

Loaded from YAML, overridden by dotted ``key=value`` pairs from the command line, validated before
any heavy work, and written back resolved into the run directory. A bad value fails with one line
that names the key and what to do (``ConfigError``).

Config stops at builder functions: components take plain arguments, never this object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError


class _Section(BaseModel):
    # inf and nan are never a sane setting (optim.lr=inf would fail only at the first epoch)
    # (a number given for a text key is that text: data.label_column=2024, tracking.experiment=7)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              coerce_numbers_to_str=True)


class DataSection(_Section):
    path: str | None = Field(None, description="image folder, CSV manifest (path,label), or a CSV "
                             "of labeled texts (text,label)")
    modality: str = Field(
        "auto", description="auto | a registered modality (image, text); auto: text for a CSV "
        "with the text column and no path column, else image"
    )
    val: str | None = Field(None, description="text: validation CSV (default: split from path)")
    test: str | None = Field(None, description="text: test CSV")
    text_column: str = "text"
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    split_seed: int = 0
    path_column: str = "path"
    label_column: str = "label"
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(
        None, ge=1, description="feature extraction, validation, prediction (default: by device)"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = main process)")
    audit: bool = Field(True, description="check for exact duplicates, leaks across splits, label "
                        "conflicts and imbalance before training (graft audit does more)")
    drop_duplicates: bool = Field(False, description="drop all but one exact copy in each split")
    drop_leaks: bool = Field(False, description="drop the copies of training inputs found in val "
                             "or test (and of val inputs in test)")
    unlabeled: str | None = Field(
        None, description="a pool of unlabeled inputs for semi-supervised training: a folder of "
        "files (or a CSV with the path column), or a CSV (text column) or .txt file of texts")
    shots: int | None = Field(
        None, ge=1, description="keep this many labeled training examples per class (seeded by "
        "split_seed, stratified); the rest are dropped, or unlabeled with unlabeled_rest")
    unlabeled_rest: bool = Field(
        False, description="with shots: the training examples not kept become the unlabeled "
        "pool (their labels hidden from training; used only to report pseudo-label precision)")

    @model_validator(mode="after")
    def _fractions(self) -> DataSection:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class ModelConfig(_Section):
    name: str | None = Field(
        None, description="default: efficientnet_lite0 for images, all-MiniLM-L6-v2 for text, "
        "whisper-tiny.en for audio; auto: the best built-in by cached probes; a+b: one head "
        "on several image backbones"
    )
    budget: float | None = Field(
        None, gt=0.0, description="auto: seconds the backbone selection may take (default: all)"
    )
    pretrained: bool = True
    weights: str | None = Field(None, description="local .safetensors or .pth backbone weights")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="dropout before the new head")
    image_size: int | None = Field(None, ge=16, description="override the model's input size")
    max_length: int | None = Field(
        None, ge=8, description="text: tokens kept per text (default: from the training data)"
    )
    pooling: Literal["mean", "cls"] = Field("mean", description="text: how tokens are pooled")
    clip_seconds: float | None = Field(
        None, gt=0.0, le=30.0,
        description="audio: the clip window in seconds (default: from the training clips)",
    )


class StrategyConfig(_Section):
    name: str = "linear_probe"
    n_blocks: int = Field(2, ge=1, description="last_n: how many of the last blocks to unfreeze")
    probe_epochs: int | None = Field(
        None, ge=1, description="lp_ft: epochs of the linear-probe stage (default: half)"
    )
    probe_lr: float = Field(3e-3, gt=0, description="lp_ft: learning rate of the probe stage")
    unfreeze_every: int = Field(1, ge=1, description="gradual: epochs between unfreezing steps")
    layer_decay: float = Field(
        1.0, gt=0.0, le=1.0, description="lr multiplier per block going down (1 = off)"
    )
    lora_r: int = Field(8, ge=1, description="lora: rank of the adapters")
    lora_alpha: int = Field(16, ge=1, description="lora: scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lora_targets: list[str] | None = Field(
        None, description="lora: module names to adapt (default: attention query and value)"
    )


class OptimConfig(_Section):
    name: str = "adamw"
    lr: float | None = Field(None, gt=0, description="default: the strategy's")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    schedule: str = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(5, ge=1, description="step schedule: epochs between decays")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: decay factor")


class LossConfig(_Section):
    name: str | None = Field(None, description="default: cross_entropy; mse for regression, "
                                "bce for multilabel")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    class_weights: Literal["none", "auto"] | list[float] = "none"
    focal_gamma: float = Field(2.0, ge=0)
    huber_delta: float = Field(1.0, gt=0)


class EarlyStopConfig(_Section):
    metric: str = Field("auto", description="validation metric to watch (auto: accuracy, rmse "
                        "or mAP)")
    patience: int | None = Field(None, ge=1, description="epochs without improvement; off if unset")
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    epochs: int | None = Field(None, ge=1, description="default: the strategy's")
    augment: str = Field("auto", description="preset; auto = none for head-only stages, else light")
    ema: float | None = Field(
        None, gt=0, lt=1, description="exponential moving average of the weights with this decay "
        "(e.g. 0.999; warmed up over the first steps): validated every epoch beside the weights, "
        "and kept when it scores better")
    mixup: float = Field(0.0, ge=0, description="MixUp alpha (0 = off)")
    cutmix: float = Field(0.0, ge=0, description="CutMix alpha (0 = off)")
    grad_clip: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1, description="gradient accumulation steps")
    early_stop: EarlyStopConfig = EarlyStopConfig()
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: "
                                "$GRAFT_THREADS, else the cores this process may use)")
    feature_cache: Literal["disk", "memory", "off"] = "disk"
    feature_engine: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="what runs a frozen backbone's feature extraction: onnx = ONNX "
        "Runtime (exported once per backbone, checked against torch); auto = onnx when "
        "installed, on the CPU in fp32, for 1,000+ inputs or a backbone exported before")
    freeze_bn: bool = Field(
        True, description="keep BatchNorm running statistics fixed while fine-tuning"
    )
    seed: int = 0
    topk: int = Field(5, ge=1)
    wise_ft: Literal["auto"] | float | None = Field(
        None, description="WiSE-FT (Wortsman et al. 2022; lp_ft): keep alpha * fine-tuned + "
        "(1 - alpha) * probe weights; auto = sweep alpha 0..1 and pick it on validation"
    )
    wise_ft_objective: Literal["clean", "clean+corruption"] = Field(
        "clean", description="what the alpha sweep maximises on validation: the monitored metric,"
        " or the mean of clean accuracy and accuracy under 4 corruptions at severity 3"
    )

    @field_validator("feature_cache", "channels_last", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:  # YAML reads `feature_cache: off` as False
        return ("on" if v else "off") if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _alpha(self) -> TrainConfig:
        if isinstance(self.wise_ft, float) and not 0.0 <= self.wise_ft <= 1.0:
            raise ValueError("wise_ft must be auto or an alpha between 0 and 1")
        return self


class SemiConfig(_Section):
    """Semi-supervised training: used when there is an unlabeled pool (data.unlabeled, or
    data.shots with data.unlabeled_rest)."""

    method: Literal["auto", "self_training", "fixmatch"] = Field(
        "auto", description="self_training: pseudo-label the pool on cached features and retrain"
        " the head, a few rounds (linear_probe, prototype, lp_ft's probe stage); fixmatch (Sohn "
        "et al. 2020): weak view pseudo-labels, strong view learns, for strategies that train "
        "the backbone; auto: self_training when the strategy starts head-only, else fixmatch")
    threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="accept a pseudo-label when its probability is at "
        "least this; default 0.8 for self_training (probabilities calibrated on val), 0.95 for "
        "fixmatch (the weak view's softmax, as in the paper)")
    rounds: int = Field(3, ge=1, description="self_training: pseudo-labelling rounds")
    balance: bool = Field(
        True, description="self_training: a class takes at most its share of the labeled data "
        "times the pool (round r of R: r/R of that), so one class cannot take over")
    mu: int = Field(7, ge=1, description="fixmatch: unlabeled examples per labeled one in a step")
    lambda_u: float = Field(1.0, ge=0.0, description="fixmatch: weight of the unlabeled loss")
    align: bool = Field(
        True, description="fixmatch: align the weak view's class distribution to the labeled "
        "one (ReMixMatch's distribution alignment), so its pseudo-labels cannot all drift to "
        "one class")


class CalibrationConfig(_Section):
    temperature: bool = Field(
        True, description="fit temperature scaling on the validation split (Guo et al. 2017)"
    )
    threshold: Literal["none", "f1", "precision", "recall"] = Field(
        "none", description="binary tasks: choose the decision threshold on validation"
    )
    target: float | None = Field(
        None, gt=0.0, lt=1.0, description="threshold=precision|recall: the value to reach"
    )

    @model_validator(mode="after")
    def _target(self) -> CalibrationConfig:
        if self.threshold in ("precision", "recall") and self.target is None:
            raise ValueError(f"threshold={self.threshold} needs calibration.target, e.g. 0.95")
        return self


class ReportConfig(_Section):
    enabled: bool = Field(True, description="write eval/<name>/report.html at the end of training")
    top_losses: int = Field(12, ge=0, description="most confidently wrong examples to show")
    tta: int = Field(1, ge=1, le=12, description="test-time augmentation: views graft predict and "
                     "evaluate average by default (1 = off; --tta overrides); the training "
                     "report shows each split with and without")


class TrackingConfig(_Section):
    backends: list[Literal["mlflow", "tensorboard"]] = Field(
        default_factory=list, description="experiment trackers, several at once: mlflow (the "
        "config as parameters, every epoch's metrics, the final metrics, the model and report as"
        " artifacts), tensorboard (event files in RUN_DIR/tensorboard)")
    uri: str | None = Field(
        None, description="mlflow: the tracking URI, e.g. http://host:5000 (default: "
        "$MLFLOW_TRACKING_URI, else MLflow's local store in the working folder)")
    experiment: str = Field("graftkit", description="mlflow: the experiment runs go into")
    parent_run_id: str | None = Field(
        None, description="mlflow: nest the run under this run (graft search sets it: each "
        "trial is a child of its study's run)")
    log_model: bool = Field(True, description="mlflow: upload model.safetensors as an artifact")


class Config(_Section):
    task: Literal["classification", "regression", "multilabel"] = "classification"
    data: DataSection = DataSection()
    model: ModelConfig = ModelConfig()
    strategy: StrategyConfig = StrategyConfig()
    optim: OptimConfig = OptimConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    semi: SemiConfig = SemiConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {p!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


_YAML11_WORDS = {"on", "off", "yes", "no", "y", "n"}  # booleans to YAML 1.1, words to users


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=1e-3"`` -> ``("optim.lr", 0.001)``; values are parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=1e-3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key")
    if raw.strip().lower() in _YAML11_WORDS:  # train.feature_cache=off is the word, not False
        return key, raw.strip()  # (a boolean key takes "off"/"no" as False all the same)
    if "#" in raw:  # YAML would read the rest as a comment: data.path=photos #2 is that folder
        return key, raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML leaves 1e-3 as a string; try a float
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in first["loc"][:-1])
        msg = "unknown key" + (f" in section '{section}'" if section else "")
        msg += "; run `graft list` or see configs/default.yaml for valid keys"
    return f"config key '{key}': {msg} (got {first.get('input')!r})"


def build_config(
    file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Merge base dict < YAML file < overrides, then validate."""
    tree: dict[str, Any] = copy.deepcopy(base or {})  # overrides must not write into ``base``
    if file is not None:
        p = Path(file)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a folder, not a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r} is not a text (YAML) file") from None
        except yaml.YAMLError as e:
            msg = f"config file {str(p)!r} is not valid YAML: {e}".splitlines()[0]
            raise ConfigError(msg) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
        tree = _merge(tree, loaded)
    if isinstance(overrides, dict):
        items = overrides.items()
    else:
        items = map(parse_override, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config tree as dotted keys: ``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
