"""The ``graft`` command. Each subcommand is a thin wrapper over the Python API.

A user mistake (``GraftError``) prints one line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from ..errors import GraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="graft: fine-tune pretrained networks on your own labeled data.")


@app.callback()
def _everywhere(
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for every "
                                       "model this command runs (default: $GRAFT_THREADS, else "
                                       "the cores this process may use)"),
) -> None:
    """graft: fine-tune pretrained networks on your own labeled data."""
    if threads:
        import os

        from ..threads import ENV

        os.environ[ENV] = str(threads)  # read by every path that runs a model, and by workers


def _flags(**kw: object) -> dict[str, object]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def train(
    data: str | None = typer.Option(None, "--data", help="image folder, CSV manifest, or CSV of "
                                    "labeled texts"),
    val: str | None = typer.Option(None, "--val", help="text: validation CSV"),
    test: str | None = typer.Option(None, "--test", help="text: test CSV"),
    text_column: str | None = typer.Option(None, "--text-column", help="text: column name"),
    label_column: str | None = typer.Option(None, "--label-column", help="label column name"),
    model: str | None = typer.Option(None, "--model", help="built-in, timm or Hugging Face "
                                     "model name (or a local model folder); auto: the best "
                                     "built-in by cached probes; a+b: one head on several "
                                     "image backbones"),
    budget: float | None = typer.Option(None, "--budget", help="--model auto: seconds the "
                                        "selection may take"),
    strategy: str | None = typer.Option(None, "--strategy", help="see `graft list`"),
    epochs: int | None = typer.Option(None, "--epochs", help="default: the strategy's"),
    out: Path | None = typer.Option(None, "--out", help="run directory to write"),
    config: Path | None = typer.Option(None, "-c", "--config", help="YAML config file"),
    weights: str | None = typer.Option(None, "--weights", help=".safetensors/.pth backbone"),
    lr: float | None = typer.Option(None, "--lr", help="learning rate"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    augment: str | None = typer.Option(None, "--augment", help="augmentation preset"),
    task: str | None = typer.Option(None, "--task", help="classification | regression | "
                                    "multilabel | text-classification"),
    val_fraction: float | None = typer.Option(None, "--val-fraction"),
    test_fraction: float | None = typer.Option(None, "--test-fraction"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | mps"),
    wise_ft: bool = typer.Option(False, "--wise-ft", help="lp_ft: keep the WiSE-FT mix of the "
                                 "probe and fine-tuned weights; alpha picked on validation"),
    no_audit: bool = typer.Option(False, "--no-audit", help="skip the check for duplicates, "
                                  "leaks and label conflicts"),
    drop_duplicates: bool = typer.Option(False, "--drop-duplicates", help="drop all but one "
                                         "exact copy in each split (recorded in the report)"),
    drop_leaks: bool = typer.Option(False, "--drop-leaks", help="drop val/test copies of "
                                    "training inputs (recorded in the report)"),
    unlabeled: str | None = typer.Option(None, "--unlabeled", help="unlabeled pool for "
                                         "semi-supervised training: a folder (or CSV) of files, "
                                         "a CSV or .txt of texts"),
    semi: str | None = typer.Option(None, "--semi", help="auto | self_training | fixmatch "
                                    "(with --unlabeled or --unlabeled-rest)"),
    shots: int | None = typer.Option(None, "--shots", min=1, help="keep K labeled training "
                                     "examples per class (seeded, stratified)"),
    unlabeled_rest: bool = typer.Option(False, "--unlabeled-rest", help="with --shots: the "
                                        "other training examples are the unlabeled pool"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run in --out"),
    resume: Path | None = typer.Option(None, "--resume", help="continue a stopped run"),
    nproc: int | None = typer.Option(None, "--nproc", min=1, help="training processes on this "
                                     "machine (torchrun; gloo on CPU, NCCL on GPUs); the batch "
                                     "size stays the global one and --threads is shared"),
    track: list[str] | None = typer.Option(None, "--track", help="mlflow | tensorboard "
                                           "(repeat for both): track the run there"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="mlflow: tracking "
                                            "server or store, e.g. http://127.0.0.1:5000"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print where the time went "
                                 "(meta.json's timings)"),
    overrides: list[str] | None = typer.Argument(None, help="config overrides key=value"),
) -> None:
    """Fine-tune a pretrained model and write a run directory."""
    from .. import api
    from ..config import parse_override
    from ..train.progress import process_age

    startup = process_age()  # the interpreter and the imports, before any run begins

    if resume is not None:
        given = _flags(data=data, val=val, test=test, text_column=text_column,
                       label_column=label_column, model=model, budget=budget,
                       strategy=strategy, epochs=epochs,
                       config=config,
                       out=out, lr=lr, augment=augment, weights=weights, batch_size=batch_size,
                       task=task, val_fraction=val_fraction, test_fraction=test_fraction,
                       device=device, unlabeled=unlabeled, semi=semi, shots=shots,
                       track=track or None, tracking_uri=tracking_uri) or \
            overrides or overwrite or wise_ft or no_audit or drop_duplicates or drop_leaks or \
            unlabeled_rest
        if given:
            raise GraftError("--resume continues a run with its saved config; drop the other "
                             "options (edit RUN_DIR/config.yaml to change it)")
        if nproc and nproc > 1:
            from ..launch import resume_config

            _spawn(nproc, *resume_config(resume), None)
            return
        run = api.resume(resume, quiet=quiet)
    else:
        modality = None
        if task == "text-classification":
            task, modality = "classification", "text"
        flags = _flags(**{
            "data.path": data, "data.val": val, "data.test": test, "data.modality": modality,
            "data.text_column": text_column, "data.label_column": label_column,
            "model.name": model, "model.budget": budget, "strategy.name": strategy,
            "train.epochs": epochs, "model.weights": weights, "optim.lr": lr,
            "data.batch_size": batch_size, "train.augment": augment, "task": task,
            "data.val_fraction": val_fraction, "data.test_fraction": test_fraction,
            "train.device": device, "train.wise_ft": "auto" if wise_ft else None,
            "data.audit": False if no_audit else None,
            "data.drop_duplicates": True if drop_duplicates else None,
            "data.drop_leaks": True if drop_leaks else None,
            "data.unlabeled": unlabeled, "semi.method": semi, "data.shots": shots,
            "data.unlabeled_rest": True if unlabeled_rest else None,
            "tracking.backends": list(dict.fromkeys(track)) if track else None,
            "tracking.uri": tracking_uri,
        })
        extra = dict(parse_override(o) for o in overrides or [])
        cfg = api.build_config(config, {**flags, **extra})
        if nproc and nproc > 1:
            from .. import run as rd

            cfg = api.resolve_inputs(cfg)
            api.validate(cfg)
            out = out or rd.default_out(cfg.model.name or "", cfg.strategy.name)
            rd.check_out_dir(out, overwrite)
            _spawn(nproc, out, cfg, out)
            return
        run = api.train(cfg, out=out, overwrite=overwrite, quiet=quiet)
    if run is None:  # a training process other than rank 0 (torchrun): rank 0 reports
        return
    _timings(run.path, startup, verbose)
    typer.echo(str(run.path))


def _spawn(nproc: int, run_dir: Path, cfg: object, out: Path | None) -> None:
    """``--nproc N``: the workers run this command (less ``--nproc``) under torchrun's agent."""
    from . import workers

    workers.check_launch(nproc, cfg.train.device, cfg.data.batch_size)  # type: ignore[attr-defined]
    workers.launch(workers.worker_args(sys.argv[1:], out), nproc, run_dir)


def _timings(run_dir: Path, startup: float | None, verbose: bool) -> None:
    """Add this process's start-up to meta.json's timings; with ``verbose`` print them, with
    their share of the whole command's time (what no phase counts is "other")."""
    from .. import run as rd
    from ..train.progress import process_age

    meta = rd.read_json(run_dir / rd.META)
    t = meta.get("timings") or {}
    if startup is not None:
        t = {"startup": round(t.get("startup", 0.0) + startup, 3),
             **{k: v for k, v in t.items() if k != "startup"}}
        meta["timings"] = t
        rd.write_json(run_dir / rd.META, meta)
    if verbose:
        total = process_age() or sum(t.values())
        rows = [*t.items(), ("other", max(0.0, total - sum(t.values())))]
        typer.echo("where the time went (s):", err=True)
        for k, v in rows:
            typer.echo(f"  {k:<16} {v:8.2f}  {100 * v / max(total, 1e-9):5.1f}%", err=True)
        typer.echo(f"  {'total':<16} {total:8.2f}", err=True)


@app.command()
def audit(
    data: str = typer.Argument(..., help="image folder, CSV manifest, or CSV of labeled texts"),
    model: str | None = typer.Option(None, "--model", help="backbone whose features compare the "
                                     "inputs (default: the modality's default model)"),
    out: Path | None = typer.Option(None, "--out", help="folder for audit.json, findings.csv, "
                                    "audit.html (default: audits/<data name>)"),
    config: Path | None = typer.Option(None, "-c", "--config", help="YAML config file (its data "
                                       "and model sections)"),
    val: str | None = typer.Option(None, "--val", help="text: validation CSV"),
    test: str | None = typer.Option(None, "--test", help="text: test CSV"),
    text_column: str | None = typer.Option(None, "--text-column", help="text: column name"),
    label_column: str | None = typer.Option(None, "--label-column", help="label column name"),
    no_label_issues: bool = typer.Option(False, "--no-label-issues", help="skip the "
                                         "cross-validated label check"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    overrides: list[str] | None = typer.Argument(None, help="config overrides key=value"),
) -> None:
    """What is wrong with the data: duplicates, leaks across splits, label errors, imbalance,
    outliers."""
    from .. import api
    from ..audit.run import PAGE
    from ..config import parse_override

    flags = _flags(**{"data.text_column": text_column, "data.label_column": label_column,
                      "data.val": val, "data.test": test})
    found = api.audit(data, model, out=out, config=config, overrides={
        **flags, **dict(parse_override(o) for o in overrides or [])},
        label_issues=not no_label_issues, quiet=quiet)
    summary = found["summary"]["findings"]
    typer.echo(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items())
               or "no findings")
    typer.echo(f"open the audit: {Path(found['out']) / PAGE}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    inputs: list[str] = typer.Argument(..., help="image or sound files or folders (a text run: "
                                       "texts, or .txt/.csv files of texts)"),
    topk: int = typer.Option(5, "--topk", "-k", min=1),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    tta: int | None = typer.Option(None, "--tta", help="test-time augmentation: average the "
                                   "model over N views (flips and crops of an image, time shifts "
                                   "of a sound; 1 = off; default: the run's report.tta)"),
) -> None:
    """Predict the top-k classes (with probabilities) of images."""
    from ..api import Run

    run = Run(run_dir)
    column = run.config.data.text_column or "text"
    results = run.predict(run.modality.expand_inputs(inputs, column), topk=topk, tta=tta)
    if as_json:
        from .. import run as rd

        typer.echo(rd.to_json(results))
        return
    for r in results:
        if "value" in r:
            typer.echo(f"{r['input']}: {r['value']:.4f}")
        elif "labels" in r:  # multi-label: every label at or above its threshold
            tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
            typer.echo(f"{r['input']}: {'; '.join(r['labels']) or '(no label)'}  ({tops})")
        else:
            tops = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in r["top"])
            typer.echo(f"{r['input']}: {r['label']}  ({tops})")


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    data: str | None = typer.Option(None, "--data", help="labeled folder or CSV (default: "
                                       "the run's own data)"),
    split: str | None = typer.Option(None, "--split", help="train | val | test"),
    name: str | None = typer.Option(None, "--name", help="name of the eval/<name> folder"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON"),
    tta: int | None = typer.Option(None, "--tta", help="test-time augmentation: average the "
                                   "model over N views (flips and crops of an image, time shifts "
                                   "of a sound; 1 = off; default: the run's report.tta)"),
) -> None:
    """Metrics, plots and an HTML report of a run on labeled data (RUN_DIR/eval/<name>/)."""
    from ..api import Run
    from ..evaluate.metrics import HEADLINE_METRICS

    if split is not None and split not in ("train", "val", "test"):
        raise GraftError(f"--split {split!r}: use train, val or test")
    m = Run(run_dir).evaluate(data, split=split, name=name, quiet=as_json, tta=tta)
    if as_json:
        from .. import run as rd

        typer.echo(rd.to_json(m))
        return
    keys = [k for k in HEADLINE_METRICS if isinstance(m.get(k), float)]
    typer.echo(f"{m['data']} [{m['split']}] n={m['n']}" + (
        f" ({m['n_skipped']} skipped)" if m["n_skipped"] else ""))
    for k in keys:
        typer.echo(f"  {k:<18} {m[k]:.4f}")
    if m.get("tta"):
        t = m["tta"]
        said = ", ".join(f"{k} {t['without'][k]:.4f} -> {t['with'][k]:.4f}" for k in t["with"]
                         if isinstance(t["with"].get(k), float))
        typer.echo(f"  test-time augmentation, {t['views']} views (without -> with): {said}; "
                   f"model time {t['model_seconds_without']:.1f} s -> "
                   f"{t['model_seconds_with']:.1f} s")
    typer.echo(f"written to {m['written_to']}")
    typer.echo(f"report: {m['report']}")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories (or folders of runs)"),
    split: str | None = typer.Option(None, "--split", help="val | test (default: test when "
                                     "every run has one)"),
    out: Path | None = typer.Option(None, "--out", help="also write the table: .md or .html"),
    sort: str | None = typer.Option(None, "--sort", help="column to sort by, e.g. macro_f1"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --out file"),
) -> None:
    """Side-by-side table of runs: model, strategy, parameters, time, metrics."""
    from rich.console import Console
    from rich.table import Table

    from ..evaluate.compare import best_rows, compare, to_html, to_markdown

    if split is not None and split not in ("train", "val", "test"):
        raise GraftError(f"--split {split!r}: use train, val or test")
    if out is not None and out.suffix.lower() not in (".md", ".html", ".htm"):
        raise GraftError(f"--out {str(out)!r}: the file must end in .md or .html")
    if out is not None and out.exists() and (out.is_dir() or not overwrite):
        raise GraftError(f"--out {str(out)!r} is a folder" if out.is_dir() else
                         f"--out {str(out)!r} exists; pass --overwrite to replace it")
    cols, rows = compare(runs, split)
    if sort is not None:
        col = next((c for c in cols if c.key == sort), None)
        if col is None:
            raise GraftError(f"--sort {sort!r}: choose one of {', '.join(c.key for c in cols)}")
        known = [r for r in rows if r[sort] is not None]
        rows = sorted(known, key=lambda r: r[sort], reverse=col.better != "low") + [
            r for r in rows if r[sort] is None]
    table = Table(show_lines=False)
    for c in cols:
        table.add_column(c.header, justify="left" if c.better is None else "right")
    best = {c.key: best_rows(c, rows) for c in cols}
    for i, r in enumerate(rows):
        table.add_row(*[f"[bold green]{c.fmt(r[c.key])}[/]" if i in best[c.key] else
                        c.fmt(r[c.key]) for c in cols])
    cells = [[c.header, *(c.fmt(r[c.key]) for r in rows)] for c in cols]
    need = sum(max(map(len, col)) + 3 for col in cells) + 1  # never elide a number
    Console(width=max(need, Console().width)).print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_markdown(cols, rows) if out.suffix.lower() == ".md" else
                       to_html(cols, rows))
        typer.echo(f"written to {out}")


@app.command()
def robustness(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    data: str | None = typer.Option(None, "--data", help="labeled folder or CSV (default: "
                                    "the run's own test/val split)"),
    split: str | None = typer.Option(None, "--split", help="train | val | test"),
    corruptions: str = typer.Option("all", "--corruptions", help="all (the 15 of ImageNet-C), "
                                    "all+extra, noise, blur, weather, digital, extra, or names; "
                                    "text runs: all, typos, format, order, or names"),
    severities: str = typer.Option("1-5", "--severities", help="e.g. 1-5, 3, 1,3,5"),
    reference: Path | None = typer.Option(None, "--reference", help="run directory whose "
                                          "robustness results normalise CE/mCE"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="score a seeded sample of "
                                     "this many images (texts)"),
    workers: int | None = typer.Option(None, "--workers", min=0, help="corrupting processes "
                                       "beside the model (default: the cores the model's "
                                       "--threads leave free, or, when it takes them all, as "
                                       "many as its threads, taking turns with it; 0: in "
                                       "process; images only)"),
    engine: str | None = typer.Option(None, "--engine", help="what runs the model: auto | onnx "
                                      "(ONNX Runtime for the backbone) | torch (default: the "
                                      "run's train.feature_engine)"),
    seed: int = typer.Option(0, "--seed"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Accuracy under the ImageNet-C corruptions, or text perturbations for a text run (mCA,
    relative robustness, mCE)."""
    from ..api import Run

    if split is not None and split not in ("train", "val", "test"):
        raise GraftError(f"--split {split!r}: use train, val or test")
    if engine is not None and engine not in ("auto", "onnx", "torch"):
        raise GraftError(f"--engine {engine!r}: use auto, onnx or torch")
    r = Run(run_dir).robustness(data, split=split, corruptions=corruptions,
                                severities=severities, reference=reference, seed=seed,
                                workers=workers, limit=limit, quiet=quiet, engine=engine)
    def num(v: float | None) -> str:  # None: undefined (a 0/0 ratio, see corruption_errors)
        return "n/a" if v is None else f"{v:.4f}"

    worst = sorted(r["corruptions"].items(), key=lambda kv: kv[1]["mean"])[:3]
    typer.echo(f"clean accuracy {r['clean_accuracy']:.4f}  mCA {r['mca']:.4f}  relative "
               f"robustness {num(r['relative_robustness'])}  (n={r['n']}, "
               f"{r['seconds']:.0f} s)")
    if r["reference"]:
        typer.echo(f"mCE {num(r['reference']['mce'])}  relative mCE "
                   f"{num(r['reference']['relative_mce'])}  (vs {r['reference']['run']})")
    typer.echo("weakest: " + ", ".join(f"{n} {v['mean']:.3f}" for n, v in worst))
    typer.echo(f"model: {r['engine']}")
    typer.echo(f"written to {r['written_to']}\nreport: {r['report']}")


@app.command()
def explain(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    inputs: list[str] | None = typer.Argument(None, help="image files or folders (a text "
                                              "run: .txt files, one text a line, or .csv)"),
    text: list[str] | None = typer.Option(None, "--text", help="text run: a text to explain "
                                          "(repeatable)"),
    method: str | None = typer.Option(None, "--method", help="gradcam (images' default) | "
                                      "gradcam++ | integrated-gradients (text's) | occlusion"),
    target: str | None = typer.Option(None, "--target", help="class to explain (default: the "
                                      "predicted one)"),
    out: Path | None = typer.Option(None, "--out", help="folder for overlays (HTML for texts) "
                                    "and JSON"),
    topk: int = typer.Option(3, "--topk", "-k", min=1),
) -> None:
    """Why the model decided: heatmap overlays or highlighted tokens, top classes,
    deletion/insertion scores."""
    from ..explain.api import cli_explain

    cli_explain(run_dir, inputs or [], method, target, out, topk, texts=text)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | torchscript | safetensors"),
    out: Path | None = typer.Option(None, "--out", help="bundle folder (default: beside the "
                                    "run, <run>-<format>)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing bundle"),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (18 or later)"),
) -> None:
    """A portable bundle: model file, preprocessing, labels, calibration, model card; checked
    against the eager model on real inputs."""
    from ..export.bundle import cli_export

    cli_export(run_dir, fmt, out, overwrite, opset)


@app.command()
def serve(
    path: Path = typer.Argument(..., help="a run directory or an ONNX export bundle"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (loopback by "
                             "default; anything else needs --token or --insecure)"),
    port: int = typer.Option(8000, "--port", help="0 picks a free port"),
    token: str | None = typer.Option(None, "--token", help="bearer token clients must send "
                                     "(default: $GRAFT_SERVE_TOKEN)"),
    insecure: bool = typer.Option(False, "--insecure", help="allow a non-loopback host "
                                  "without a token"),
    max_batch: int = typer.Option(16, "--max-batch", help="inputs per model call (1: no "
                                  "batching)"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="how long a batch waits to "
                                      "fill"),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="request body limit (413)"),
    max_pixels: int | None = typer.Option(None, "--max-pixels", help="image pixel limit (413; "
                                          "default 25 million)"),
    max_request_pixels: int | None = typer.Option(
        None, "--max-request-pixels", help="pixels of all images of one request (413; default "
        "200 million)"),
    max_decode_pixels: int | None = typer.Option(
        None, "--max-decode-pixels", help="pixels decoded at once across the server; requests "
        "beyond it wait, or get 503 when as many again are waiting (default 50 million)"),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="per-request time limit (504)"),
    topk: int = typer.Option(5, "--topk", help="classes returned per input"),
) -> None:
    """Serve a run or ONNX bundle over HTTP: predictions, Grad-CAM, metrics, drift, web page."""
    from ..serve.cli import cli_serve

    cli_serve(path, host, port, token, insecure, max_batch, max_wait_ms, max_body_mb,
              max_pixels, timeout_s, topk, max_request_pixels=max_request_pixels,
              max_decode_pixels=max_decode_pixels)


@app.command()
def calibrate(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    temperature: bool = typer.Option(True, "--temperature/--no-temperature",
                                     help="fit temperature scaling on validation"),
    threshold: str = typer.Option("keep", "--threshold", help="binary runs: f1 | precision | "
                                  "recall | none | keep (the run's current choice)"),
    target: float | None = typer.Option(None, "--target", help="precision/recall to reach"),
) -> None:
    """Refit a run's calibration (temperature, decision threshold) on its validation split."""
    from ..api import Run
    from ..inference import THRESHOLD_CHOICES, THRESHOLDS

    if threshold not in THRESHOLDS:
        raise GraftError(f"--threshold {threshold!r}: use {THRESHOLD_CHOICES}")
    cal = Run(run_dir).calibrate(temperature=temperature, threshold=threshold, target=target)
    typer.echo(f"temperature {cal['temperature']:.4f}" + (
        f"; threshold P({cal['positive_class']}) >= {cal['threshold']:.4f} ({cal['criterion']})"
        if cal.get("threshold") is not None else ""))
    if cal.get("thresholds") is not None:  # multi-label: one per label
        typer.echo("thresholds " + ", ".join(f"{t:.3f}" for t in cal["thresholds"]))
    for k in ("ece", "log_loss", "macro_f1"):
        if k in cal["before"]:
            typer.echo(f"  val {k:<9} {cal['before'][k]:.4f} -> {cal['after'][k]:.4f}")


@app.command("list")
def list_cmd(
    live: bool = typer.Option(False, "--live", help="read the registries themselves (imports "
                              "torch) instead of the catalogue written from them"),
) -> None:
    """Show registered modalities, models, strategies, optimizers, schedules, losses,
    augmentations and corruptions."""
    from rich.console import Console
    from rich.table import Table

    from . import catalogue

    console = Console()
    for section in catalogue.build() if live else catalogue.load():
        table = Table(title=section["title"], title_justify="left", show_header=False, box=None)
        for name, help_ in section["rows"]:
            table.add_row(f"  [bold]{name}[/]", help_)
        console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="run directory (replaced if a run)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fine-tune the built-in efficientnet_lite0 on scikit-learn's handwritten digits."""
    from ..demo import run_demo

    run_demo(out, quiet=quiet)


from . import search as _search  # noqa: E402

app.command("search")(_search.search)
app.command("lr-find")(_search.lr_find)
app.command("soup")(_search.soup)


def main() -> None:
    try:
        app(standalone_mode=False)
    except GraftError as e:
        from ..errors import PEER_EXIT, PeerFailed

        if isinstance(e, PeerFailed):  # (a worker that stops because another one failed)
            sys.exit(PEER_EXIT)
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        typer.echo(f"{'' if rank == '0' else f'[rank {rank}] '}error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code)
    except OSError as e:  # a full disk, a read-only or vanished folder: one line, not a traceback
        if os.environ.get("GRAFT_DEBUG"):
            raise
        where = f": {e.filename}" if e.filename else ""
        typer.echo(f"error: {e.strerror or type(e).__name__}{where}", err=True)
        sys.exit(2)
    except Exception as e:
        # Usage errors: typer bundles its own copy of click (typer._click), so the classes are
        # recognised by name, whichever click raised them; one line, exit 2 as click's own.
        kinds = {c.__name__ for c in type(e).__mro__}
        if "ClickException" in kinds:
            typer.echo(f"error: {e.format_message()}", err=True)  # type: ignore[attr-defined]
            sys.exit(2 if "UsageError" in kinds else getattr(e, "exit_code", 1))
        if "Abort" in kinds:
            typer.echo("aborted", err=True)
            sys.exit(130)
        raise


def entry() -> None:
    """The ``graft`` console script: ``main()``, then a quick exit.

    With torch, timm, scikit-learn and ONNX imported, the interpreter's own teardown (freeing
    every module and its C objects) takes 0.5-1.5 s after the command has finished and written
    everything. A command that returns normally runs the exit handlers (loggers, trackers,
    temporary folders, child processes), flushes its output and leaves with ``os._exit``; a
    failure, ``GRAFT_DEBUG``, a profiler or tracer, or a thread still running exits the usual
    way.
    """
    main()
    import threading

    watched = sys.gettrace() is not None or sys.getprofile() is not None  # a profiler, coverage
    if watched or os.environ.get("GRAFT_DEBUG") or any(
            t.is_alive() and not t.daemon for t in threading.enumerate()
            if t is not threading.main_thread()):
        return
    import atexit

    getattr(atexit, "_run_exitfuncs", lambda: None)()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            pass
    os._exit(0)


if __name__ == "__main__":
    entry()
