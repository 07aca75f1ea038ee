"""The search space: a YAML mapping of config keys to what to sample for them.

    strategy.name: {choices: [linear_probe, lp_ft, full]}
    optim.lr:                                   # variants: the first whose `when` holds is used
      - {when: {strategy.name: linear_probe}, low: 1.0e-3, high: 3.0e-2, log: true}
      - {when: {strategy.name: [full, lp_ft]}, low: 1.0e-5, high: 1.0e-3, log: true}
    train.epochs: {low: 3, high: 8}             # ints stay ints; `step` is optional
    model.dropout: {value: 0.2}                 # fixed

Keys are sampled in file order, so a ``when`` can test any key above it (or a value of the base
config). Optuna sees one parameter per variant (``optim.lr`` or ``optim.lr[1]``), so the TPE
model of one strategy's learning rate is not mixed with another's; the leaderboard shows config
keys. ``grid`` (a list of values) makes a float range usable by the grid sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, build_config
from ..errors import ConfigError

DEFAULT_SPACE = Path(__file__).with_name("default_space.yaml")


@dataclass
class Variant:
    key: str
    name: str  # the Optuna parameter name
    when: dict[str, list[Any]] = field(default_factory=dict)
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None
    grid: list[Any] | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.log or (
            isinstance(self.step, int) and isinstance(self.low, int))

    def applies(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(k) in vs for k, vs in self.when.items())

    def sample(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        if self.low is None:
            return self.value
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high or 0),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high or 0),
                                   log=self.log, step=self.step)

    def grid_values(self) -> list[Any] | None:
        if self.choices is not None:
            return list(self.choices)
        if self.grid is not None:
            return list(self.grid)
        if self.is_int and self.low is not None and self.high is not None:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None if self.low is not None else [self.value]

    def recentre(self, centre: float) -> None:
        """Keep the width of a log range, centred (geometrically) on ``centre``."""
        assert self.low is not None and self.high is not None and self.log
        half = math.sqrt(float(self.high) / float(self.low))
        self.low, self.high = centre / half, centre * half


@dataclass
class Space:
    variants: list[Variant]
    source: str

    def keys(self) -> list[str]:
        return list(dict.fromkeys(v.key for v in self.variants))

    def sample(self, trial: Any, base: dict[str, Any]) -> dict[str, Any]:
        """Config overrides for one trial (only the keys whose ``when`` holds)."""
        chosen: dict[str, Any] = dict(base)
        out: dict[str, Any] = {}
        for key in self.keys():
            for v in self.variants:
                if v.key == key and v.applies(chosen):
                    chosen[key] = out[key] = v.sample(trial)
                    break
        return out

    def key_of(self, param: str) -> str:
        return next(v.key for v in self.variants if v.name == param)

    def grid(self) -> dict[str, list[Any]]:
        out = {}
        for v in self.variants:
            values = v.grid_values()
            if values is None:
                raise ConfigError(f"search space {self.source}: '{v.key}' is a continuous range; "
                                  "the grid sampler needs `choices` or a `grid: [...]` list")
            out[v.name] = values
        return out

    def to_yaml(self) -> str:
        tree: dict[str, Any] = {}
        for key in self.keys():
            vs = [_dump(v) for v in self.variants if v.key == key]
            tree[key] = vs[0] if len(vs) == 1 else vs
        return yaml.safe_dump(tree, sort_keys=False)


def _dump(v: Variant) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if v.when:
        d["when"] = {k: vs[0] if len(vs) == 1 else vs for k, vs in v.when.items()}
    for k in ("choices", "low", "high", "step", "grid"):
        if getattr(v, k) is not None:
            d[k] = getattr(v, k)
    if v.log:
        d["log"] = True
    if v.choices is None and v.low is None:
        d["value"] = v.value
    return d


_FIELDS = {"when", "choices", "low", "high", "log", "step", "value", "grid"}


def load_space(path: str | Path | None = None) -> Space:
    """Parse and check a space file (default: the shipped one). Every key must be a config key,
    every range well-formed; a mistake names the key."""
    p = Path(path) if path else DEFAULT_SPACE
    if not p.is_file():
        raise ConfigError(f"search space file {str(p)!r} not found")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"search space {str(p)!r} is not valid YAML: "
                          f"{str(e).splitlines()[0]}") from None
    return parse_space(tree, str(p))


def parse_space(tree: Any, source: str = "<space>") -> Space:
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"search space {source}: expected a mapping of config keys to ranges")
    variants: list[Variant] = []
    for key, spec in tree.items():
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise ConfigError(f"search space {source}: '{key}' has no variants")
        _check_key(str(key), source)
        for i, s in enumerate(specs):
            name = str(key) if len(specs) == 1 else f"{key}[{i}]"
            variants.append(_variant(str(key), name, s, source))
    known = {v.key for v in variants}
    for v in variants:
        for k in v.when:
            _check_key(k, source)
            if k not in known:
                continue
            before = [u.key for u in variants[:variants.index(v)]]
            if k not in before:
                raise ConfigError(f"search space {source}: '{v.key}' depends on '{k}', which "
                                  "must come before it")
    return Space(variants, source)


def _variant(key: str, name: str, s: Any, source: str) -> Variant:
    where = f"search space {source}: '{key}'"
    if not isinstance(s, dict):
        s = {"value": s}
    unknown = set(s) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}; use "
                          f"{', '.join(sorted(_FIELDS))}")
    when = {str(k): (vs if isinstance(vs, list) else [vs])
            for k, vs in (s.get("when") or {}).items()}
    v = Variant(key, name, when, choices=s.get("choices"), low=s.get("low"), high=s.get("high"),
                log=bool(s.get("log", False)), step=s.get("step"), value=s.get("value"),
                grid=s.get("grid"))
    if v.choices is not None:
        if not isinstance(v.choices, list) or not v.choices:
            raise ConfigError(f"{where}: choices must be a non-empty list")
    elif v.low is not None or v.high is not None:
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                   for x in (v.low, v.high)):
            raise ConfigError(f"{where}: low and high must both be numbers")
        assert v.low is not None and v.high is not None
        if v.low >= v.high or (v.log and v.low <= 0):
            raise ConfigError(f"{where}: need low < high{' and low > 0 for log' if v.log else ''}"
                              f" (got {v.low}, {v.high})")
    elif "value" not in s:
        raise ConfigError(f"{where}: give choices, low/high or value")
    return v


def _check_key(key: str, source: str) -> None:
    node: Any = Config
    for part in key.split("."):
        fields = getattr(node, "model_fields", None)
        if not fields or part not in fields:
            raise ConfigError(f"search space {source}: '{key}' is not a config key (see "
                              "configs/default.yaml)")
        node = fields[part].annotation


def check_values(space: Space, base: dict[str, Any]) -> None:
    """Each categorical value alone must make a valid config: a typo in a choice fails now, not
    as a failed trial an hour later."""
    for v in space.variants:
        for value in (v.choices or []):
            try:
                build_config(None, {v.key: value}, base=base)
            except ConfigError as e:
                raise ConfigError(f"search space {space.source}: '{v.key}' choice {value!r}: "
                                  f"{e}") from None
