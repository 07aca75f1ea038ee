"""graft serve under load: requests/s and p50/p99 latency at concurrency 1, 8 and 32, with dynamic
micro-batching on (--max-batch 16) and off (--max-batch 1), on a real hymenoptera run.

Trains graft's default linear probe (pretrained efficientnet_lite0) on hymenoptera_256 (or takes
``--run RUN_DIR``), then for each setting starts the real command, ``graft serve RUN --port 0``, in
a subprocess on loopback, warms it up, and sends single-image multipart requests (the validation
photos, round robin) from an asyncio client holding ``concurrency`` requests in flight. Latency is
per request, seen by the client; throughput is requests over wall time. The server's own
batch-size histogram is read from /metrics. The client shares the machine's cores with the
server; the load average is recorded, as the machine may be shared.

    cd benchmarks && ../.venv/bin/python serve_load.py [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import DATA_DIR, ROOT, write_result

CONCURRENCY = (1, 8, 32)
REQUESTS = {1: 48, 8: 160, 32: 256}  # per concurrency level
WARMUP = 32
SETTINGS = {"on": ["--max-batch", "16", "--max-wait-ms", "5"],
            "off": ["--max-batch", "1", "--max-wait-ms", "0"]}


class Server:
    def __init__(self, run: Path, args: list[str]) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graftkit.cli.main", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = [m for ln in self.lines if (m := re.search(r"http://127\.0\.0\.1:\d+", ln))]
            if found:
                self.url = found[0].group(0)
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready:\n" + "".join(self.lines))

    def batch_sizes(self) -> tuple[float, float]:
        import httpx

        text = httpx.get(f"{self.url}/metrics").text
        get = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
               if ln.startswith(("graft_batch_size_count ", "graft_batch_size_sum "))}
        return get["graft_batch_size_count"], get["graft_batch_size_sum"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def _load(url: str, payloads: list[bytes], n: int, concurrency: int
                ) -> tuple[list[float], float, int]:
    """Send ``n`` requests with ``concurrency`` in flight: (latencies s, wall s, errors)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_i, errors
            while next_i < n:
                i = next_i
                next_i += 1
                files = [("file", (f"{i}.jpg", payloads[i % len(payloads)], "image/jpeg"))]
                t0 = time.perf_counter()
                r = await client.post(f"{url}/v1/predict", files=files)
                latencies.append(time.perf_counter() - t0)
                errors += r.status_code != 200

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall, errors


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure(run: Path, setting: str, payloads: list[bytes]) -> dict[str, Any]:
    server = Server(run, SETTINGS[setting])
    try:
        server.wait_ready()
        asyncio.run(_load(server.url, payloads, WARMUP, 8))
        out: dict[str, Any] = {"server_args": SETTINGS[setting]}
        for c in CONCURRENCY:
            count0, sum0 = server.batch_sizes()
            load = os.getloadavg()[0]
            lat, wall, errors = asyncio.run(_load(server.url, payloads, REQUESTS[c], c))
            count, total = server.batch_sizes()
            out[f"c{c}"] = {
                "requests": REQUESTS[c], "errors": errors, "requests_per_s": REQUESTS[c] / wall,
                "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * _percentile(lat, 0.99),
                "mean_batch": (total - sum0) / max(1.0, count - count0),
                "load_average_1m": [load, os.getloadavg()[0]]}
            r = out[f"c{c}"]
            print(f"  batching {setting:<3} c={c:<2} {r['requests_per_s']:6.1f} req/s  p50 "
                  f"{r['p50_ms']:6.0f} ms  p99 {r['p99_ms']:6.0f} ms  mean batch "
                  f"{r['mean_batch']:4.1f}  errors {errors}", flush=True)
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished hymenoptera run (default: train "
                        "the linear probe now)")
    args = parser.parse_args()
    import graftkit

    data = DATA_DIR / "hymenoptera_256"
    payloads = [p.read_bytes() for cls in ("ants", "bees")
                for p in sorted((data / "val" / cls).glob("*.jpg"))[:16]]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, train_s = args.run, None
        if run_dir is None:
            os.environ["GRAFT_CACHE_DIR"] = tmp
            t0 = time.perf_counter()
            run_dir = graftkit.finetune(data=data, strategy="linear_probe",
                                        out=Path(tmp) / "run", quiet=True).path
            train_s = time.perf_counter() - t0
        meta = graftkit.Run(run_dir).meta
        results = {s: measure(run_dir, s, payloads) for s in ("on", "off")}
    ratio = {f"c{c}": results["on"][f"c{c}"]["requests_per_s"] /
             results["off"][f"c{c}"]["requests_per_s"] for c in CONCURRENCY}
    result = {
        "data": "hymenoptera_256", "model": meta["model"]["name"], "strategy": meta["strategy"],
        "input_size": meta["preprocessing"]["input_size"], "request": "one JPEG per request "
        "(multipart), validation photos round robin", "client": "httpx.AsyncClient on the same "
        "machine", "batching_on": results["on"], "batching_off": results["off"],
        "throughput_ratio_on_vs_off": ratio, "target_ratio_c32": 1.5, "train_s": train_s,
        "torch_threads_server": "torch default (one per core)",
    }
    print(f"batching on vs off, throughput at concurrency 32: {ratio['c32']:.2f}x (target 1.5x); "
          f"at 8: {ratio['c8']:.2f}x; at 1: {ratio['c1']:.2f}x")
    print(f"written to {write_result('serve_load', result)}")


if __name__ == "__main__":
    main()
