"""Typed config: YAML + dotted overrides, validated early with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftkit.api import validate
from graftkit.config import Config, build_config, parse_override
from graftkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_parse_yaml_scalars() -> None:
    assert parse_override("optim.lr=1e-3") == ("optim.lr", 1e-3)
    assert parse_override("train.epochs=4") == ("train.epochs", 4)
    assert parse_override("train.freeze_bn=true") == ("train.freeze_bn", True)
    assert parse_override("loss.class_weights=[1, 2]") == ("loss.class_weights", [1, 2])
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")
    # a # is part of the value (YAML would drop the rest as a comment: another folder)
    assert parse_override("data.path=photos #2") == ("data.path", "photos #2")
    # a number given for a text key is that text
    cfg = build_config(overrides=dict(map(parse_override, ["data.label_column=2024",
                                                          "tracking.experiment=7"])))
    assert cfg.data.label_column == "2024" and cfg.tracking.experiment == "7"


def test_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.1\n  name: sgd\ntrain:\n  epochs: 3\n")
    cfg = build_config(f, ["optim.lr=0.01"])
    assert (cfg.optim.lr, cfg.optim.name, cfg.train.epochs) == (0.01, "sgd", 3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "'optim.lrr': unknown key in section 'optim'"),
        ("optim.lr=-1", "'optim.lr'"),
        ("train.epochs=zero", "'train.epochs'"),
        ("data.val_fraction=1.5", "'data.val_fraction'"),
        ("train.device=tpu", "'train.device'"),
        ("bogus=1", "'bogus': unknown key"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(None, [override])


def test_validate_catches_unknown_names_before_heavy_work(tmp_path: Path) -> None:
    for override, key in [("strategy.name=nope", "strategy.name"),
                          ("optim.name=lion", "optim.name"),
                          ("optim.schedule=zigzag", "optim.schedule"),
                          ("train.augment=wild", "train.augment"),
                          ("model.name=not_a_model_xyz", "model.name"),
                          ("loss.name=mse", "loss.name"),
                          ("train.early_stop.metric=rmse", "train.early_stop.metric")]:
        cfg = build_config(None, {"data.path": str(tmp_path), **dict([parse_override(override)])})
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(cfg)
    with pytest.raises(ConfigError, match="data.path"):
        validate(build_config(None, {"data.path": str(tmp_path / "missing")}))


def test_bad_yaml_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(f)
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "none.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    assert isinstance(build_config(path), Config)


def test_default_yaml_is_the_default_config() -> None:
    assert build_config(ROOT / "configs" / "default.yaml") == Config()


def test_overrides_never_write_into_the_base_tree() -> None:
    """A search builds every trial's config from one base tree: a trial's override must not
    leak into the next trial's."""
    base = build_config(None, {"strategy.name": "linear_probe"}).model_dump()
    first = build_config(None, {"strategy.name": "full", "train.augment": "strong"}, base=base)
    second = build_config(None, {}, base=base)
    assert first.strategy.name == "full" and first.train.augment == "strong"
    assert second.strategy.name == "linear_probe" and second.train.augment == "auto"


def test_a_binary_config_file_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not a text"):
        build_config(f)


def test_names_from_users_never_leave_their_folder(tmp_path: Path) -> None:
    from graftkit import run as rd

    assert rd.safe_name("..") == "data" and rd.safe_name("../..") == "data"
    assert rd.safe_name(".hidden") == "hidden" and rd.safe_name("v1.2 final") == "v1.2_final"
    assert rd.eval_dir(tmp_path, tmp_path, "val", "..").parent == tmp_path / rd.EVAL
