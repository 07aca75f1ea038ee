"""graft's default against its peers, same data, same threads, cold cache, whole-process wall
time and val accuracy, interleaved (A B C, A B C, ...):

* ``graft``: ``graft --threads T train --data DIR`` (the default strategy), with an empty
  ``$GRAFT_CACHE_DIR`` (no cached features, no exported engine: its first export counts);
* ``fastai``: ``vision_learner`` + ``fine_tune(5, freeze_epochs=1)`` (benchmarks/peers/
  fastai_fine_tune.py), in the peers' own virtual environment;
* ``torch``: a plain PyTorch loop fine-tuning every layer for 5 epochs (benchmarks/peers/
  torch_loop.py);
* ``timm``: timm's own ``train.py`` fine-tuning every layer for 5 epochs (benchmarks/peers/
  timm_train.py), in the peers' environment. train.py is not part of timm's wheel, only of its
  git repository: ``--timm-train PATH`` names the train.py of a checkout of
  huggingface/pytorch-image-models (this repository holds none of its code).

Every tool starts from the same pretrained efficientnet_lite0 weights (graft's built-in ones,
written once to a safetensors file) at 224 px. Before the first timed run each tool's libraries
are imported once, untimed (:data:`WARM_UP`): a fresh checkout's first import compiles its
bytecode and reads its files from disk, which no later run pays.

    python benchmarks/vs_peers.py --install-peers     # once: benchmarks/.peers (not part of CI)
    python benchmarks/vs_peers.py [--threads 1,2] [--sets hymenoptera,caltech] [--reps 1]
                                  [--tools graft,fastai,torch,timm --timm-train PATH/train.py]

Writes benchmarks/results/vs_peers_<sets>.json (machine, versions, load average before each run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import GRAFT_WARM_UP, IMAGE_SETS, ROOT, write_result

PEERS = ROOT / "benchmarks" / ".peers"
PEER_PY = PEERS / "bin" / "python"
SCRIPTS = {"fastai": ROOT / "benchmarks" / "peers" / "fastai_fine_tune.py",
           "torch": ROOT / "benchmarks" / "peers" / "torch_loop.py",
           "timm": ROOT / "benchmarks" / "peers" / "timm_train.py"}
ARCH = "tf_efficientnet_lite0"  # graft's efficientnet_lite0
# what each tool imports, imported once untimed before the first timed run (see the docstring)
WARM_UP = {"graft": GRAFT_WARM_UP,
           "fastai": "import fastai.vision.all, safetensors.torch",
           "torch": "import torch, torchvision, timm, safetensors.torch",
           "timm": "import torch, timm, timm.data, safetensors.torch"}


def install_peers() -> None:
    """The peers' virtual environment: torch as graft's (this machine's local wheels), fastai,
    timm. Not part of CI."""
    import torch
    import torchvision

    subprocess.run([sys.executable, "-m", "venv", str(PEERS)], check=True)
    pip = [str(PEER_PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}",
                    f"torchvision=={torchvision.__version__.split('+')[0]}"], check=True)
    subprocess.run([*pip, "fastai>=2.8", "timm>=1.0", "safetensors"], check=True)
    print(f"peers installed in {PEERS}")


def peer_versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('fastai', 'torch', 'timm')}))")
    out = subprocess.run([str(PEER_PY), "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def timm_checkout(train_py: Path) -> dict[str, str]:
    """Which train.py ran: its checkout's commit (where it is a git work tree) and version."""
    here = {"path": str(train_py)}
    head = subprocess.run(["git", "-C", str(train_py.parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        here["commit"] = head.stdout.strip()
    version = train_py.parent / "timm" / "version.py"
    if version.is_file():
        here["timm_version"] = version.read_text().split("=")[-1].strip().strip("'\"")
    return here


def write_weights(path: Path) -> None:
    """graft's built-in efficientnet_lite0 backbone (no classifier) as a safetensors file."""
    from safetensors.torch import save_file

    from graftkit.models.vision import create_backbone

    model, _ = create_backbone("efficientnet_lite0", True, None)
    model.reset_classifier(0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def run(tool: str, data: Path, threads: int, weights: Path, timm_train: Path | None = None
        ) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GRAFT_CACHE_DIR=str(Path(tmp) / "cache"), OMP_NUM_THREADS=str(
            threads))
        result = Path(tmp) / "result.json"
        if tool == "graft":
            cmd = [sys.executable, "-m", "graftkit.cli.main", "--threads", str(threads), "train",
                   "--data", str(data), "--out", str(Path(tmp) / "run"), "--quiet"]
        else:
            py = str(PEER_PY) if tool in ("fastai", "timm") else sys.executable
            cmd = [py, str(SCRIPTS[tool]), str(threads), str(data), str(weights), ARCH,
                   str(result), *([str(timm_train)] if tool == "timm" else [])]
        load = round(os.getloadavg()[0], 2)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"{tool} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        if tool == "graft":
            metrics = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
            meta = json.loads((Path(tmp) / "run" / "meta.json").read_text())
            out = {"accuracy": metrics["val"]["accuracy"], "strategy": meta.get("strategy"),
                   "timings": meta.get("timings"),
                   "feature_engine": meta.get("feature_engine", {}).get("engine")}
        else:
            out = json.loads(result.read_text())
        return {"tool": tool, "threads": threads, "wall_s": round(wall, 2),
                "load_avg_1m_before": load, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--install-peers", action="store_true")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sets", default="hymenoptera,caltech")
    ap.add_argument("--tools", default="graft,fastai,torch")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timm-train", type=Path, default=None,
                    help="train.py of a pytorch-image-models checkout (for --tools ...,timm)")
    ap.add_argument("--name", default=None, help="results file name (default: vs_peers_<sets>)")
    args = ap.parse_args()
    if args.install_peers:
        install_peers()
        return
    tools = args.tools.split(",")
    if {"fastai", "timm"} & set(tools) and not PEER_PY.is_file():
        raise SystemExit("no peers' environment: python benchmarks/vs_peers.py --install-peers")
    if "timm" in tools and not (args.timm_train and args.timm_train.is_file()):
        raise SystemExit("--tools ...,timm needs --timm-train PATH: the train.py of a checkout "
                         "of huggingface/pytorch-image-models (not part of timm's wheel)")
    for tool in tools:
        py = str(PEER_PY) if tool in ("fastai", "timm") else sys.executable
        subprocess.run([py, "-c", WARM_UP[tool]], check=True)
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "efficientnet_lite0.safetensors"
        write_weights(weights)
        for name in args.sets.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                mine = []
                for rep in range(args.reps):
                    for tool in tools:
                        r = run(tool, IMAGE_SETS[name], threads, weights, args.timm_train)
                        r.update(set=name, rep=rep)
                        rows.append(r)
                        mine.append(r)
                        print(f"{name:<12} {threads} thr  {tool:<7} wall {r['wall_s']:7.1f} s  "
                              f"val acc {r['accuracy']:.4f}  (load {r['load_avg_1m_before']})",
                              flush=True)
                by = {t: [r for r in mine if r["tool"] == t] for t in tools}
                s = {t: {"wall_s": round(sum(r["wall_s"] for r in v) / len(v), 2),
                         "accuracy": round(sum(r["accuracy"] for r in v) / len(v), 4)}
                     for t, v in by.items()}
                if "graft" in s:
                    for t in tools:
                        s[t]["graft_faster"] = round(s[t]["wall_s"] / s["graft"]["wall_s"], 2)
                summary[f"{name}/{threads}"] = s
                print(f"{name} {threads} thr: " + ", ".join(
                    f"{t} {v['wall_s']:.1f} s {v['accuracy']:.4f}" for t, v in s.items()),
                    flush=True)
    result = {"threads": args.threads, "reps": args.reps, "warm_up": WARM_UP, "summary": summary,
              "runs": rows}
    if {"fastai", "timm"} & set(tools):
        result["peers"] = peer_versions()
    if "timm" in tools:
        result["timm_train"] = timm_checkout(args.timm_train)
    print(write_result(args.name or "vs_peers_" + "_".join(args.sets.split(",")), result))


if __name__ == "__main__":
    main()
