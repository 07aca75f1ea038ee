"""One training session: the config turned into components, run, and written to the run directory.

``build_session`` is the only place that reads the config tree; every component below it gets
plain values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import modalities
from . import run as rd
from .config import Config, to_yaml
from .data import decoded
from .data.sources import DataSpec
from .data.spec import UnlabeledPool, take_shots
from .data.tta import Averaged
from .errors import ConfigError, DataError
from .evaluate.analysis import Analysis, analyze, compare_tta
from .evaluate.calibration import Calibration, fit_calibration, fit_multilabel_calibration
from .evaluate.metrics import LOWER_IS_BETTER, SUMMARY_METRICS
from .modalities import Modality
from .models.base import label_prior_bias
from .strategies import STRATEGIES, Stage, Strategy, StrategyParams
from .threads import thread_count, use_threads
from .train import distributed, engines, select, wise_ft
from .train import hooks as H
from .train.checkpoint import leaves_out, load_weights, read_state_info, save_weights
from .train.device import (
    resolve_channels_last,
    resolve_device,
    resolve_precision,
)
from .train.distributed import World
from .train.loop import (
    LoopData,
    LoopSettings,
    features_for,
    fit,
    loss_value,
    predict_batches,
    score,
)
from .train.losses import LossFn, auto_class_weights, build_loss
from .train.progress import Reporter
from .train.semi import RoundStore, SemiSettings


@dataclass
class Session:
    cfg: Config
    out: Path
    spec: DataSpec
    modality: Modality
    strategy: Strategy
    model: Any  # a graftkit.models.base.ModelAdapter
    stages: list[Stage]
    loss_fn: LossFn
    settings: LoopSettings
    data: LoopData
    reporter: Reporter
    resume_info: dict[str, Any] | None = None
    extra_hooks: list[Any] = field(default_factory=list)  # e.g. the search's pruning hook
    tracking: Any = None  # a train.tracking.Tracking when tracking.backends names any
    decoded: dict[str, int] = field(default_factory=dict)  # data.decoded's counts of this fit

    def fit(self) -> None:
        metric = self.settings.monitor
        if self.data.pool is not None:  # self-training keeps each round's choice in the run
            self.data.run_dir = self.out  # (where the run is now: --overwrite swapped it in)
        state_file = self.out / rd.STATE if self.resume_info else None
        head_only = [st.head_only for st in self.stages]
        best = H.BestCheckpoint(self.out / rd.WEIGHTS, metric, self.cfg.train.early_stop.min_delta,
                                head_only=head_only, resume_from=state_file)
        hooks: list[H.Hook] = [best]
        if self.cfg.train.early_stop.patience:
            hooks.append(H.EarlyStopping(self.cfg.train.early_stop.patience,
                                         last_stage=len(self.stages) - 1))
        if self.cfg.train.wise_ft is not None:  # the probe the fine-tuned weights are mixed with
            hooks.append(H.SnapshotAtStage(self.out / wise_ft.PROBE, len(self.stages) - 1))
        hooks += [H.History(self.out / rd.HISTORY),
                  H.StateCheckpoint(self.out / rd.STATE, head_only)]
        if self.tracking is not None:
            hooks.append(self.tracking)
        hooks += self.extra_hooks  # last: they see the epoch after it is recorded and saved
        if not self.settings.world.main:  # rank 0 writes and decides; the others follow it
            hooks = []
        try:
            with self.reporter.phase("training"):  # less its feature extraction (own phase)
                state = fit(self.model, self.stages, self.loss_fn, self.settings, self.data,
                            hooks, self.reporter, state_file, self.resume_info)
        except BaseException:  # Ctrl-C, a diverged step: the best epoch so far is the run's
            if self.settings.world.main:
                try:
                    best.on_error(self.model)
                except OSError as e:  # (the error that stopped training is the one to see)
                    self.reporter.warn(f"could not write the best epoch's weights: {e}")
            raise
        finally:  # what discovery decoded and the first pass did not take goes
            self.decoded = decoded.clear()
        self.best_value, self.best_epoch, self.stop_reason = (
            state.best, state.best_epoch, state.stop_reason)

    def mark(self, status: str, seconds: float, reason: str | None = None) -> None:
        meta = rd.read_json(self.out / rd.META)
        meta["status"] = status
        if reason:
            meta["failure"] = reason
        meta["train_time_s"] = meta.get("train_time_s", 0.0) + seconds
        rd.write_json(self.out / rd.META, meta)
        if self.tracking is not None:
            self.tracking.end(status)

    def finish(self, seconds: float) -> None:
        """Reload the best weights, score every split, calibrate on validation, write
        metrics.json, the final meta and the evaluation report(s)."""
        if self.strategy.finalize is not None:  # e.g. LoRA: the run holds the merged model
            self.strategy.finalize(self.model, self.out / rd.WEIGHTS)
        load_weights(self.model, self.out / rd.WEIGHTS)
        if self.cfg.train.wise_ft is not None:
            self._wise_ft(self.cfg.train.wise_ft)
        self.model.eval()
        s, unchanged = self.settings, all(st.head_only for st in self.stages)
        outputs = {}
        with self.reporter.phase("final scoring"):
            for split, items in self.spec.splits.items():
                # A backbone that never trained hits the feature cache: scoring costs the head.
                feats = features_for(self.model, items, split, self.data, s, self.reporter,
                                     mode=s.feature_cache if unchanged else "off",
                                     engine=None if unchanged else "torch")
                loader = torch.utils.data.DataLoader(feats, batch_size=256)
                outputs[split] = predict_batches(self.model.head, loader, s)
        with self.reporter.phase("calibration"):
            cal = self._calibrate(*outputs["val"]) if "val" in outputs else Calibration()
        metrics: dict[str, Any] = {"monitor": s.monitor, "best_epoch": (self.best_epoch or 0) + 1}
        analyses = {}
        for split, (o, t) in outputs.items():
            analyses[split] = a = analyze(
                o, t, s.task, list(s.classes), cal, s.topk, self.spec.target_stats,
                items=[str(p) for p, _ in self.spec.splits[split]])
            metrics[split] = {"loss": loss_value(o, t, self.loss_fn, s), **a.metrics}
        rd.write_json(self.out / rd.METRICS, metrics)
        meta = rd.read_json(self.out / rd.META)
        if meta.get("semi"):
            meta["semi"]["rounds"] = RoundStore(self.out).records()
        meta.update(status="completed", best_epoch=metrics["best_epoch"],
                    best_value=self.best_value, stop_reason=self.stop_reason,
                    train_time_s=meta.get("train_time_s", 0.0) + seconds)
        if s.task in ("classification", "multilabel"):
            meta["calibration"] = {**cal.to_dict(), "fitted_on": "val"}
        rd.write_json(self.out / rd.META, meta)
        if "val" in analyses and len(analyses["val"].targets):  # graft serve's drift baseline
            from .evaluate.reference import from_analysis, write_reference

            with self.reporter.phase("drift reference"):
                write_reference(self.out, from_analysis(analyses["val"], self.modality))
        self._summary(metrics, meta["train_time_s"])
        if self.cfg.report.enabled:
            tta = {}
            if self.cfg.report.tta > 1:  # the report shows the averaged model, and the plain one
                with self.reporter.phase("test-time augmentation"):
                    tta = self._tta(analyses, cal)
            with self.reporter.phase("report"):
                self._reports(analyses, meta, tta)
        self._write_timings()
        if self.tracking is not None:
            with self.reporter.phase("tracking"):
                self._track(metrics)

    def _track(self, metrics: dict[str, Any]) -> None:
        """The final metrics and the run's files to the trackers, then end their runs."""
        files = [(self.out / n, None) for n in (rd.CONFIG, rd.META, rd.METRICS, rd.HISTORY,
                                                rd.DATA_REPORT)]
        if self.cfg.tracking.log_model:
            files.append((self.out / rd.WEIGHTS, None))
        files.append((self.out / rd.EVAL, rd.EVAL))
        self.tracking.final(metrics, files, self.out)
        self.tracking.end("completed")

    def _write_timings(self) -> None:
        """meta.json's ``timings``: seconds per phase of this run (a resumed run adds each
        attempt's), exclusive: feature extraction is not in training, the gallery not in the
        report."""
        meta = rd.read_json(self.out / rd.META)
        old = meta.get("timings") or {}
        new = self.reporter.timings()
        meta["timings"] = {k: round(old.get(k, 0.0) + new.get(k, 0.0), 3)
                           for k in [*old, *(k for k in new if k not in old)]}
        if engines.used():  # what ran the frozen backbone's feature extraction
            meta["feature_engine"] = engines.used()
        if self.decoded.get("kept") or self.decoded.get("past_bound"):
            meta["decoded_once"] = self.decoded  # files decoded once / twice (past the bound)

        rd.write_json(self.out / rd.META, meta)

    def _wise_ft(self, alpha: float | str) -> None:
        """Replace the best fine-tuned weights with their WiSE-FT mix (alpha given, or swept on
        validation); keep both ends in checkpoints/."""
        from safetensors.torch import load_file

        finetuned = self.out / wise_ft.FINETUNED
        if not finetuned.is_file():  # a re-run finish (resume) must not mix twice
            save_weights(self.model, finetuned)
        theta_0, theta_1 = load_file(str(self.out / wise_ft.PROBE)), load_file(str(finetuned))
        sweep = None
        if alpha == "auto":
            alpha, sweep = self._sweep_alpha(theta_0, theta_1)
        self.model.load_state_dict(wise_ft.interpolate(theta_0, theta_1, float(alpha)))
        save_weights(self.model, self.out / rd.WEIGHTS)
        meta = rd.read_json(self.out / rd.META)
        meta["wise_ft"].update(alpha=float(alpha), sweep=sweep)
        rd.write_json(self.out / rd.META, meta)
        self.reporter.line(f"  WiSE-FT: model.safetensors = {float(alpha):g} x fine-tuned + "
                           f"{1 - float(alpha):g} x probe weights")

    def _sweep_alpha(self, theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor]
                     ) -> tuple[float, list[dict[str, float]]]:
        """Score alpha = 0, 0.1, ..., 1 on validation; the best objective wins (ties: see
        ``wise_ft.pick_alpha``)."""
        s, objective = self.settings, self.cfg.train.wise_ft_objective
        val = self.spec.splits["val"]
        sets = {"clean": self.model.make_dataset(val, s.task)}
        if objective == "clean+corruption":
            sets.update(self.modality.corrupted_sets(self.model, val, s.task, self.cfg.train.seed))
        rows = []
        for a in wise_ft.ALPHAS:
            self.model.load_state_dict(wise_ft.interpolate(theta_0, theta_1, a))
            self.model.eval()
            row: dict[str, float] = {"alpha": a}
            for name, ds in sets.items():
                loader = torch.utils.data.DataLoader(ds, batch_size=s.eval_batch_size,
                                                     collate_fn=self.model.collate)
                o, t = predict_batches(self.model, loader, s)
                m = score(o, t, self.loss_fn, s)
                if name == "clean":
                    row.update(val_loss=m["loss"], **{f"val_{s.monitor}": m[s.monitor]})
                    row["val_accuracy"] = m.get("accuracy", row.get("val_accuracy"))
                else:
                    row[f"val_accuracy_{name}"] = m["accuracy"]
            if objective == "clean+corruption":
                corr = [v for k, v in row.items() if k.startswith("val_accuracy_")]
                row["objective"] = (row["val_accuracy"] + sum(corr) / len(corr)) / 2
            else:
                sign = -1.0 if s.monitor in LOWER_IS_BETTER else 1.0
                row["objective"] = sign * row[f"val_{s.monitor}"]
            rows.append(row)
            self.reporter.line(f"  WiSE-FT alpha {a:.1f}: " + "  ".join(
                f"{k.removeprefix('val_')} {v:.4f}" for k, v in row.items() if k != "alpha"))
        return wise_ft.pick_alpha(rows), rows

    def _calibrate(self, logits: torch.Tensor, targets: torch.Tensor) -> Calibration:
        c = self.cfg.calibration
        if self.settings.task == "multilabel":
            cal, warning = fit_multilabel_calibration(logits, targets, c.temperature)
            if warning:
                self.reporter.warn(warning)
            return cal
        if self.settings.task != "classification":
            return Calibration()
        cal, warning = fit_calibration(logits, targets, list(self.settings.classes),
                                       c.temperature, c.threshold, c.target)
        if warning:
            self.reporter.warn(warning)
        return cal

    def _tta(self, analyses: dict[str, Analysis], cal: Calibration) -> dict[str, Any]:
        """``report.tta`` views: the val and test splits scored by the averaged model (its
        analysis replaces the plain one in ``analyses``), calibrated on its own val outputs
        (``calibration_tta`` in meta.json, which predict and evaluate use for that many views);
        returns each split's comparison."""
        s, out, n = self.settings, {}, self.cfg.report.tta
        model = self.model.eval()
        cal_tta = cal
        for split in ("val", "test"):
            items = self.spec.splits.get(split)
            if not items:
                continue
            averaged = Averaged(model, self.modality.tta_views(n, model, self.cfg))
            loader = torch.utils.data.DataLoader(model.make_dataset(items, s.task),
                                                 batch_size=s.eval_batch_size,
                                                 collate_fn=model.collate)
            o, t = predict_batches(averaged, loader, s)
            if split == "val" and s.task == "classification":
                cal_tta = self._calibrate(o, t)
                meta = rd.read_json(self.out / rd.META)
                meta["calibration_tta"] = {**cal_tta.to_dict(), "views": n, "fitted_on": "val"}
                rd.write_json(self.out / rd.META, meta)
            a = analyze(o, t, s.task, list(s.classes), cal_tta, s.topk, self.spec.target_stats,
                        items=[str(p) for p, _ in items])
            plain = analyze(torch.cat(averaged.plain).cpu(), t, s.task, list(s.classes), cal,
                            s.topk, self.spec.target_stats)
            out[split] = compare_tta(plain, a, [n for n, _ in averaged.views], averaged.seconds,
                                     cal.temperature, cal_tta.temperature)
            analyses[split] = a
            said = ", ".join(f"{k} {out[split]['without'][k]:.4f} -> {v:.4f}"
                             for k, v in out[split]["with"].items() if isinstance(v, float))
            self.reporter.line(f"  {split} with {len(averaged.views)} test-time views: {said}")
        return out

    def _reports(self, analyses: dict[str, Analysis], meta: dict[str, Any],
                 tta: dict[str, Any] | None = None) -> None:
        """The report of the validation split, and of the test split when there is one (with
        ``tta``, of the view-averaged model: each split's comparison with the plain one); its
        gallery is drawn with the model in memory."""
        from .evaluate.report import write_eval

        data, cal = self.cfg.data.path or "", Calibration.from_meta(meta)
        model = self.model.cpu().to(memory_format=torch.channels_last)

        def gallery(examples: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
            with self.reporter.phase("gallery"):  # thumbnails and overlays of the worst errors
                return self.modality.gallery(examples, model, list(self.spec.classes), cal,
                                             out)

        for split in ("val", "test"):
            if split in analyses and len(analyses[split].targets):
                out = rd.eval_dir(self.out, data, split)
                audit = rd.read_json(self.out / rd.DATA_REPORT).get("audit")
                write_eval(out, analyses[split], self.out, meta,
                           {"data": data, "split": split, "n_skipped": len(self.spec.skipped),
                            "audit": audit, **({"tta": tta[split]} if tta and split in tta
                                               else {})},
                           top_losses=self.cfg.report.top_losses, gallery=gallery)
                self.reporter.line(f"  report: {out / rd.REPORT}")

    def _summary(self, metrics: dict[str, Any], seconds: float) -> None:
        keys = SUMMARY_METRICS[self.cfg.task]
        for split in ("train", "val", "test"):
            if split in metrics:
                vals = "  ".join(f"{k} {metrics[split][k]:.4f}" for k in keys)
                self.reporter.line(f"  {split:<5} {vals}  (n={metrics[split]['n']})")
        self.reporter.line(f"[bold green]done[/] in {seconds:.0f}s; best epoch "
                           f"{metrics['best_epoch']}; run directory: {self.out}")


def _strategy_params(cfg: Config) -> StrategyParams:
    st = cfg.strategy
    return StrategyParams(st.n_blocks, st.probe_epochs, st.probe_lr, st.unfreeze_every,
                          st.lora_r, st.lora_alpha, st.lora_dropout,
                          tuple(st.lora_targets) if st.lora_targets else None)


def semi_method(cfg: Config, stages: list[Stage]) -> str | None:
    """The semi-supervised method of this config (None: no unlabeled pool): ``auto`` is
    self-training when the strategy starts with a head-only stage, else FixMatch."""
    d = cfg.data
    if not d.unlabeled and not d.unlabeled_rest:
        return None
    m = cfg.semi.method
    return m if m != "auto" else ("self_training" if stages[0].head_only else "fixmatch")


# Self-training's default threshold, on probabilities calibrated on val: with the strict class
# balance of graftkit.train.semi.select, 0.95 accepted nothing on caltech101_10_160 at 1 shot
# and 0.8 closed most of the gap to the full-label probe there and on hymenoptera_256 at 2
# shots (benchmarks/semi.py has both). FixMatch keeps the paper's 0.95 on the weak view's softmax.
SELF_TRAINING_THRESHOLD, FIXMATCH_THRESHOLD = 0.8, 0.95


def semi_threshold(cfg: Config, stages: list[Stage]) -> float:
    if cfg.semi.threshold is not None:
        return cfg.semi.threshold
    fixmatch = any(st.fixmatch for st in stages)
    return FIXMATCH_THRESHOLD if fixmatch else SELF_TRAINING_THRESHOLD


def plan_stages(cfg: Config, strat: Strategy) -> list[Stage]:
    """The strategy's stages for this config; WiSE-FT needs a probe stage and a fine-tuned one.

    Self-training repeats the first (head-only) stage ``semi.rounds`` times, each round on the
    labels plus that round's pseudo-labels; the stages after it (LP-FT's fine-tuning) train on
    the labels plus the pseudo-labels the final probe chooses. FixMatch runs in every stage that
    trains the backbone."""
    stages = strat.plan(cfg.train.epochs or strat.epochs_for(cfg.data.modality),
                        cfg.optim.lr or strat.default_lr, _strategy_params(cfg))
    method = semi_method(cfg, stages)
    if method == "self_training":
        if not stages[0].head_only:
            raise ConfigError(f"config key 'semi.method': self-training pseudo-labels on cached "
                              f"features, and {cfg.strategy.name} trains the backbone from the "
                              "start; use linear_probe, prototype or lp_ft, or semi.method="
                              "fixmatch")
        r = cfg.semi.rounds
        stages = [stages[0],
                  *(replace(stages[0], name=f"self-train {i}", pseudo_round=i)
                    for i in range(1, r + 1)),
                  *(replace(st, pseudo_round=r + 1) for st in stages[1:])]
    elif method == "fixmatch":
        if all(st.head_only for st in stages):
            raise ConfigError(f"config key 'semi.method': FixMatch trains the backbone on "
                              f"augmented views; {cfg.strategy.name} keeps it frozen (use "
                              "semi.method=self_training, or a strategy such as full or lp_ft)")
        mixed = [k for k, on in (("train.mixup", cfg.train.mixup), ("train.cutmix",
                 cfg.train.cutmix), ("train.augment=augmix_jsd",
                 cfg.train.augment == "augmix_jsd")) if on]
        if mixed:  # its labeled batches would be mixed (ignored) or stacked views (a crash)
            raise ConfigError(f"config key 'semi.method': FixMatch trains on its own weak and "
                              f"strong views, not with {' or '.join(mixed)}; drop it, or use "
                              "semi.method=self_training with lp_ft")
        stages = [replace(st, fixmatch=True) if not st.head_only else st for st in stages]
    if cfg.train.wise_ft is not None and not (
            len(stages) > 1 and stages[0].head_only and not stages[-1].head_only):
        raise ConfigError("config key 'train.wise_ft': WiSE-FT mixes a linear probe with its "
                          f"fine-tuned continuation; use --strategy lp_ft, not {cfg.strategy.name}")
    return stages


def _loss(cfg: Config, spec: DataSpec) -> LossFn:
    name = cfg.loss.name or {"regression": "mse", "multilabel": "bce"}.get(cfg.task,
                                                                            "cross_entropy")
    weights = None
    if cfg.task == "classification":
        k = len(spec.classes)
        if cfg.loss.class_weights == "auto":
            weights = auto_class_weights([int(t) for _, t in spec.splits["train"]], k)
        elif isinstance(cfg.loss.class_weights, list):
            if len(cfg.loss.class_weights) != k:
                raise ConfigError(f"config key 'loss.class_weights': {len(cfg.loss.class_weights)}"
                                  f" weights for {k} classes ({', '.join(spec.classes)})")
            weights = torch.tensor(cfg.loss.class_weights, dtype=torch.float32)
    return build_loss(name, class_weights=weights, label_smoothing=cfg.loss.label_smoothing,
                      focal_gamma=cfg.loss.focal_gamma, huber_delta=cfg.loss.huber_delta)


def build_session(cfg: Config, out: Path, monitor: str, quiet: bool = False,
                  resuming: bool = False, world: World | None = None, name: str | None = None,
                  setup_s: float | None = None) -> Session:
    """``cfg`` validated and resolved (``graftkit.launch``); ``monitor`` the validation metric
    that selects the best epoch. With several processes (``world``) every rank builds the same
    session; rank 0 alone prints and writes. ``setup_s``: the seconds the caller spent before
    this (its imports, the checks of the config), the timings' ``setup``."""
    world = world or World()
    reporter = Reporter(quiet or not world.main)
    if setup_s is not None:
        reporter.add_time("setup", setup_s)
    engines.reset()
    # the thread setting is this machine's: its processes share it
    use_threads(max(1, thread_count(cfg.train.threads) // world.local_size))
    decoded.share(world.local_size)  # and the memory for decoded files
    torch.manual_seed(cfg.train.seed)
    device = distributed.start(world, resolve_device(cfg.train.device))
    if world.size > 1:
        _check_world(cfg, world)
    amp = resolve_precision(cfg.train.precision, device)
    d, modality = cfg.data, modalities.get(cfg.data.modality)
    reporter.line(f"[bold]data[/] {d.path}")
    with reporter.phase("data"):  # discovery (every file decoded once), audit, pool
        spec = modality.discover(d, cfg.task, progress=reporter)
        reporter.line(_data_line(spec))
        for item in spec.skipped[:5]:
            reporter.warn(f"skipped {item['path']}: {item['reason']}")
        if len(spec.skipped) > 5:
            reporter.warn(f"... {len(spec.skipped) - 5} more skipped; see "
                          f"{out / rd.DATA_REPORT}")
        checked = _quick_audit(cfg, spec, modality, reporter) if d.audit else None
        pool = _unlabeled(cfg, spec, modality, reporter)
    if cfg.calibration.threshold != "none" and (cfg.task != "classification"
                                                or len(spec.classes) != 2):
        raise ConfigError("config key 'calibration.threshold': a decision threshold is for binary "
                          f"classification; this data has {len(spec.classes)} classes")
    loss_fn = _loss(cfg, spec)  # checks loss.class_weights against the classes, before the model
    n_out = 1 if cfg.task == "regression" else len(spec.classes)
    strat = STRATEGIES.get(cfg.strategy.name)
    stages = plan_stages(cfg, strat)
    if world.size > 1 and any(st.fixmatch for st in stages):
        raise ConfigError("config key 'semi.method': FixMatch does not train on several "
                          "processes yet; train it with one, or use self-training "
                          "(linear_probe, prototype, lp_ft)")
    ts = spec.target_stats
    settings = LoopSettings(
        task=cfg.task, classes=spec.classes, batch_size=d.batch_size, num_workers=d.num_workers,
        eval_batch_size=modality.eval_batch(d, device),
        augment=cfg.train.augment, optimizer=cfg.optim.name, weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
        layer_decay=cfg.strategy.layer_decay, schedule=cfg.optim.schedule,
        warmup_epochs=cfg.optim.warmup_epochs, step_size=cfg.optim.step_size,
        gamma=cfg.optim.gamma, grad_clip=cfg.train.grad_clip, accumulate=cfg.train.accumulate,
        mixup=cfg.train.mixup, cutmix=cfg.train.cutmix, monitor=monitor,
        seed=cfg.train.seed, device=device, amp_dtype=amp,
        channels_last=resolve_channels_last(cfg.train.channels_last, device),
        feature_cache=cfg.train.feature_cache, feature_engine=cfg.train.feature_engine,
        freeze_bn=cfg.train.freeze_bn, ema=cfg.train.ema, topk=cfg.train.topk,
        target_mean=ts.get("mean", 0.0), target_std=ts.get("std", 1.0),
        semi=SemiSettings(semi_threshold(cfg, stages), cfg.semi.rounds, cfg.semi.balance,
                          cfg.semi.mu, cfg.semi.lambda_u, cfg.semi.align, modality.weak_view,
                          modality.strong_view),
        world=world,
    )
    data = LoopData(spec.splits["train"], spec.splits["val"], spec.fingerprint())
    if pool is not None:
        data.pool, data.pool_hidden = pool.items, pool.hidden
        data.pool_fingerprint = pool.fingerprint()
    selection = None
    if cfg.model.name == select.AUTO and not resuming:
        with reporter.phase("model selection"):
            cfg, selection = _select_model(cfg, spec, modality, n_out, data, settings, reporter,
                                           out)
    m = cfg.model
    reporter.line(f"[bold]model[/] {m.name}  [bold]strategy[/] {cfg.strategy.name}")
    with reporter.phase("model load"):
        # a probe's state leaves out the backbone it never trained: the rebuilt model loads it
        backbone = not resuming or leaves_out(out / rd.STATE) is not None
        model, about_model = modality.create_model(m, spec, n_out, out, resuming,
                                                   load_backbone=backbone)
        if cfg.task == "multilabel" and not resuming:
            label_prior_bias(model, [t for _, t in spec.splits["train"]])
        modality.tta_views(cfg.report.tta, model, cfg)  # report.tta: views it has, or one line
        if strat.prepare is not None:  # e.g. LoRA wraps the model with its adapters
            strat.prepare(model, _strategy_params(cfg))
    if world.main:
        rd.write_json(out / rd.DATA_REPORT, {**spec.report(), **about_model,
                                             **({"audit": checked} if checked else {}),
                                             **({"unlabeled": pool.report()} if pool else {})})
    resume_info = None
    if resuming:
        resume_info = read_state_info(out / rd.STATE)
        if not world.main:  # the run directory is rank 0's to write
            return Session(cfg, out, spec, modality, strat, model, stages, loss_fn, settings,
                           data, reporter, resume_info)
        rd.truncate_history(out / rd.HISTORY, resume_info["epoch"] + 1)
        reporter.line(f"resuming after epoch {resume_info['epoch'] + 1}")
        meta = rd.read_json(out / rd.META)
        if spec.classes != meta["classes"] or spec.target_stats != meta["target_stats"]:
            raise DataError(f"the classes or targets in {d.path!r} changed since this run started"
                            "; start a new run instead of resuming")
        if meta["data"]["fingerprint"] != data.fingerprint:
            reporter.warn("the data changed since this run started; resuming on the new data")
        meta["status"] = "running"
        meta.pop("failure", None)
        meta.pop("distributed", None)  # this attempt's is written below
        rd.write_json(out / rd.META, meta)
    elif world.main:
        (out / rd.CONFIG).write_text(to_yaml(cfg))
        meta = _meta(cfg, spec, modality, model, stages, data.fingerprint, settings, pool)
        if selection is not None:
            meta["model_selection"] = {"file": select.FILE, "chosen": selection["chosen"],
                                       "seconds": selection["seconds"],
                                       "n_scored": len(selection["candidates"]),
                                       "n_skipped": len(selection["skipped"])}
        rd.write_json(out / rd.META, meta)
    tracking = _tracking(cfg, out, name or out.name, resume_info, reporter) if (
        cfg.tracking.backends and world.main) else None
    if world.size > 1 and world.main:  # (a resumed run may have another number than before)
        meta = rd.read_json(out / rd.META)
        meta["distributed"] = {"world_size": world.size, "nodes": world.size // world.local_size,
                               "backend": distributed.backend_for(device.type),
                               "threads_per_process": torch.get_num_threads()}
        rd.write_json(out / rd.META, meta)
    return Session(cfg, out, spec, modality, strat, model, stages, loss_fn, settings,
                   data, reporter, resume_info, tracking=tracking)


def _tracking(cfg: Config, out: Path, name: str, resume_info: dict[str, Any] | None,
              reporter: Reporter) -> Any:
    """Start the run's trackers (or continue those of its first attempt); their ids go into
    meta.json."""
    from .train import tracking

    meta = rd.read_json(out / rd.META)
    t = cfg.tracking
    tags = {"graft.model": str(cfg.model.name), "graft.strategy": cfg.strategy.name,
            "graft.modality": cfg.data.modality, "graft.data": str(cfg.data.path)}
    started = tracking.start(
        t.backends, out, uri=t.uri, experiment=t.experiment, run_name=name,
        config=cfg.model_dump(mode="json"), config_yaml=to_yaml(cfg), tags=tags,
        resume=meta.get("tracking") if resume_info else None,
        next_step=(resume_info["epoch"] + 2) if resume_info else 1, warn=reporter.warn,
        parent=t.parent_run_id)
    meta["tracking"] = started.ids()
    rd.write_json(out / rd.META, meta)
    return started


def _select_model(cfg: Config, spec: DataSpec, modality: Modality, n_out: int, data: LoopData,
                  settings: LoopSettings, reporter: Reporter, out: Path
                  ) -> tuple[Config, dict[str, Any]]:
    """``model.name: auto``: every built-in backbone of the modality scored by a cached probe
    (see :mod:`graftkit.train.select`); the config of the winner."""
    names = modality.auto_candidates()

    def extract(name: str) -> tuple[Any, Any]:
        m = cfg.model.model_copy(update={"name": name})
        with select.scratch_dir(out) as tmp:  # a text model's tokenizer files, dropped after
            model, _ = modality.create_model(m, spec, n_out, Path(tmp), False)
        model.to(settings.device)  # as fit() places the model it trains
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)
        train = features_for(model, data.train, "train", data, settings, reporter).tensors

        def val() -> tuple[Any, Any]:
            return features_for(model, data.val, "val", data, settings, reporter).tensors if (
                data.val) else (None, None)

        return train, val

    reporter.line(f"[bold]model[/] auto: {len(names)} built-in {modality.noun} backbones "
                  f"({', '.join(names)}), scored by cached probes")
    chosen, report = select.select(names, extract, modality.combines, cfg.train.seed,
                                   cfg.model.budget, out, reporter.line)
    reporter.line(f"  chosen: [bold]{chosen}[/] (ranking in {out / select.FILE})")
    # the budget bounded the choice (model_selection.json keeps it); the run names its model
    chosen_model = cfg.model.model_copy(update={"name": chosen, "budget": None})
    return cfg.model_copy(update={"model": chosen_model}), report


def _check_world(cfg: Config, world: World) -> None:
    """What several processes need of the config (the global batch splits evenly)."""
    if cfg.model.name == select.AUTO:
        raise ConfigError("config key 'model.name': auto chooses on one process; run graft "
                          "train --model auto once (the ranking is in its run directory), then "
                          "launch the chosen model on several")
    if cfg.data.batch_size % world.size:
        raise ConfigError(f"config key 'data.batch_size': the global batch of "
                          f"{cfg.data.batch_size} does not split over {world.size} processes; "
                          f"give a multiple of {world.size}")


def _quick_audit(cfg: Config, spec: DataSpec, modality: Modality, reporter: Reporter
                 ) -> dict[str, Any]:
    """Exact duplicates, leaks across splits and label conflicts (by content digest) and the
    class balance: warned about in the terminal, kept in the data report (and so in the
    evaluation report); with data.drop_duplicates / drop_leaks the copies are dropped and listed
    as skipped. ``graft audit`` does the rest (near duplicates, label errors, outliers)."""
    from .audit.findings import drop, quick

    d = cfg.data
    found = quick(spec, modality.content_key)
    dropped = drop(spec, found, d.drop_duplicates, d.drop_leaks)
    spec.skipped += dropped
    for kind, what in (("leak", "inputs of one split are also in another"),
                       ("label_conflict", "identical inputs carry different labels"),
                       ("exact_duplicate", "inputs appear more than once in a split")):
        rows = found.of(kind)
        if rows:
            first = rows[0]
            where = " / ".join(f"{s}: {i}" for s, i in zip(first.splits, first.items))
            done = [r for r in dropped if r["reason"].startswith(
                "dropped (--drop-leaks)" if kind == "leak" else "dropped (--drop-duplicates)")]
            tail = f"; {len(done)} copies dropped" if done and kind != "label_conflict" else (
                "; --drop-leaks drops them" if kind == "leak" else
                "; --drop-duplicates keeps one" if kind == "exact_duplicate" else "")
            reporter.warn(f"audit: {len(rows)} {kind.replace('_', ' ')}s: {what} (e.g. {where})"
                          f"{tail}; details: graft audit {d.path}")
    few = found.of("few_train")
    if few:
        names = ", ".join(f"{f.labels[0]!r} ({int(f.score)})" for f in few[:5])
        reporter.warn(f"audit: {len(few)} class{'es' if len(few) > 1 else ''} with almost no "
                      f"training examples: {names}{', ...' if len(few) > 5 else ''}: a typo in "
                      "a label, or a CSV row broken by a stray quote?")
    return {**found.summary(), "dropped": len(dropped),
            "details": [f.to_dict() for f in found.findings
                        if f.kind in ("leak", "label_conflict", "exact_duplicate")][:200]}


def _data_line(spec: DataSpec) -> str:
    counts = ", ".join(f"{s} {len(v)}" for s, v in spec.splits.items())
    what = {"classification": f"{len(spec.classes)} classes",
            "multilabel": f"{len(spec.classes)} labels (multi-label)"}.get(spec.task, spec.task)
    return f"  {spec.layout}: {what}; {counts}; {len(spec.skipped)} files skipped"


def _unlabeled(cfg: Config, spec: DataSpec, modality: Modality, reporter: Reporter
               ) -> UnlabeledPool | None:
    """``data.shots``: keep that many labeled training examples per class (the rest become the
    pool with ``data.unlabeled_rest``); ``data.unlabeled``: the pool given. A pool input that is
    also a labeled one (same content) is refused: it would be pseudo-labeled against its label,
    or leak validation data into training."""
    d = cfg.data
    rest: list[tuple[str, float]] = []
    if d.shots:
        kept, rest, short = take_shots(spec.splits["train"], d.shots, d.split_seed)
        spec.splits["train"] = kept
        if short:
            reporter.warn(f"--shots {d.shots}: {len(short)} classes have fewer training examples "
                          f"({', '.join(spec.classes[c] for c in short[:5])}); all of theirs "
                          "are kept")
        reporter.line(f"  shots: {d.shots} per class -> {len(kept)} labeled training examples; "
                      f"{len(rest)} more "
                      + ("are the unlabeled pool (labels hidden)" if d.unlabeled_rest
                         else "left out"))
    if not d.unlabeled and not d.unlabeled_rest:
        return None
    rest = rest if d.unlabeled_rest else []  # without it, the other training examples are out
    if d.unlabeled_rest and not rest and not d.unlabeled:
        raise DataError(f"--shots {d.shots} keeps every training example: the unlabeled pool "
                        "(--unlabeled-rest) is empty; take fewer shots")
    pool = UnlabeledPool([p for p, _ in rest], [], [t for _, t in rest] if rest else None,
                         inline=spec.inline)
    if rest:
        pool.sources.append(f"{spec.source}: training examples beyond --shots (labels hidden)")
    if d.unlabeled:
        given, pool.skipped = modality.discover_unlabeled(d.unlabeled, d, progress=reporter)
        labeled = {modality.content_key(item): split for split, items in spec.splits.items()
                   for item, _ in items}
        clash = [(g, labeled[k]) for g in given if (k := modality.content_key(g)) in labeled]
        if clash:
            g, split = clash[0]
            raise DataError(f"the unlabeled pool {d.unlabeled!r} holds {len(clash)} inputs that "
                            f"are also labeled (e.g. {g[:80]!r}, in {split}); remove them from "
                            "the pool")
        pool.items += given
        if pool.hidden is not None:
            pool.hidden += [-1.0] * len(given)
        pool.sources.append(d.unlabeled)
        for item in pool.skipped[:3]:
            reporter.warn(f"unlabeled pool: skipped {item['path']}: {item['reason']}")
    spec.unlabeled = pool.items
    reporter.line(f"  unlabeled pool: {len(pool.items)} inputs"
                  + (f"; {len(pool.skipped)} skipped" if pool.skipped else ""))
    return pool


def _meta(cfg: Config, spec: DataSpec, modality: Modality, model: Any, stages: list[Stage],
          fingerprint: str, s: LoopSettings, pool: UnlabeledPool | None = None
          ) -> dict[str, Any]:
    semi = None
    if pool is not None:
        sc = cfg.semi
        semi = {"method": semi_method(cfg, stages), "pool": len(pool.items),
                "pool_sources": pool.sources, "labels_hidden": pool.hidden is not None,
                "shots": cfg.data.shots, "threshold": s.semi.threshold, "rounds": [],
                "n_rounds": sc.rounds, "balance": sc.balance, "mu": sc.mu,
                "lambda_u": sc.lambda_u, "align": sc.align, "weak_view": s.semi.weak_view,
                "strong_view": s.semi.strong_view}
    return {
        "format": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "running",
        "task": cfg.task,
        "classes": spec.classes,
        "num_outputs": 1 if cfg.task == "regression" else len(spec.classes),
        "target_stats": spec.target_stats,
        "modality": spec.modality,
        "model": {"name": cfg.model.name, "arch": modality.arch(cfg.model.name or ""),
                  "head": getattr(model, "head_kind", "linear"),
                  "dropout": cfg.model.dropout, "num_features": model.num_features,
                  "total_params": sum(p.numel() for p in model.parameters()),
                  "weights": cfg.model.weights, "pretrained": cfg.model.pretrained,
                  **({"parts": model.parts_meta()}
                     if hasattr(model, "parts_meta") else {})},
        "preprocessing": model.data_config.to_dict(),
        "strategy": cfg.strategy.name,
        "stages": [{"name": st.name, "epochs": st.epochs, "lr": st.lr} for st in stages],
        "semi": semi,
        "shots": cfg.data.shots,
        "monitor": s.monitor,
        "wise_ft": ({"alpha": cfg.train.wise_ft, "theta_0": wise_ft.PROBE,
                     "theta_1": wise_ft.FINETUNED} if cfg.train.wise_ft is not None else None),
        "data": {"source": spec.source, "layout": spec.layout, "fingerprint": fingerprint,
                 "counts": {k: len(v) for k, v in spec.splits.items()}},
        "device": str(s.device),
        "precision": str(s.amp_dtype).replace("torch.", "") if s.amp_dtype else "fp32",
        "versions": rd.versions(),
    }
