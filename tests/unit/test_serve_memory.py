"""graft serve's memory under large images: the real app under uvicorn in a subprocess, its peak
RSS read from /proc while 8 clients each send 16 single-colour 5000x5000 PNGs at once (a 1.3 MB
request that decodes to 1.6 GB of RGB).

With the default limits every request is over the per-request pixel limit and refused from the
image headers (413) before anything is decoded. With that limit raised, the server-wide decode
budget holds the rest: here one image at a time (the default is two, ~260 MB measured, but the
test would take twice as long), one request waits and the others get 503 at once; the requests
served answer 200. Either way the peak grows by less than 500 MB (1.6 GB for one such request
before the budget, when every decoded image was kept until the request ended).
The model is a stand-in using the real image preprocessing (resize + crop to 64 px).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

SIDE, PER_REQUEST, CLIENTS = 5000, 16, 8
MAX_RISE_MB = 500

SERVER = textwrap.dedent("""
    import json, socket, sys
    from types import SimpleNamespace

    import numpy as np
    import uvicorn

    from graftkit.data.transforms import DataConfig
    from graftkit.modalities import get
    from graftkit.serve import create_app
    from graftkit.serve.app import Settings

    class TinyImageModel:
        # The class is the dominant colour channel of the image the real preprocessing makes.
        source, name, path, explainable, task = "run", "tiny", "/nowhere", False, "classification"
        classes = ["red", "green", "blue"]
        modality = get("image")
        decode_side = 73  # what eval_transform resizes the short side to (64 / 0.875)

        def load(self):
            dc = DataConfig(64, 0.875, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
            self.view = self.modality.model_view(SimpleNamespace(data_config=dc))

        def prepare(self, image):
            return self.view(image).mean((1, 2)).numpy()  # (3,)

        def forward(self, batch):
            return list(np.stack(batch))

        def describe(self, row, topk):
            i = int(np.argmax(row))
            return {"label": self.classes[i], "prob": 1.0,
                    "top": [{"label": self.classes[i], "prob": 1.0}]}

        def warmup(self):
            self.forward([self.prepare(self.modality.warmup_input(64))])

        def has_reference(self):
            return False

        def reference(self):
            raise ValueError("no reference")

        def explain(self, image, topk):
            raise ValueError("no")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print("PORT", sock.getsockname()[1], flush=True)
    app = create_app(TinyImageModel(), Settings(**json.loads(sys.argv[1])))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
""")


def _kb(pid: int, key: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", status).group(1))


class Server:
    def __init__(self, settings: dict) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(settings)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 60
        while not any(ln.startswith("PORT") for ln in self.lines):
            assert self.proc.poll() is None and time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)
        port = next(ln for ln in self.lines if ln.startswith("PORT")).split()[1]
        self.url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.05)

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def reset_peak(self) -> int:
        """The server's RSS now, in kB, with its peak (VmHWM) reset to it where Linux allows."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
        except OSError:  # then the peak so far (imports, warm-up) is the baseline
            return _kb(self.proc.pid, "VmHWM")
        return _kb(self.proc.pid, "VmRSS")

    def peak(self) -> int:
        return _kb(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (230, 20, 20)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000  # small on the wire: 1.3 MB for 16
    return buf.getvalue()


def _flood(server: Server, png: bytes, clients: int = CLIENTS) -> tuple[list[httpx.Response],
                                                                         float]:
    """``clients`` concurrent requests of PER_REQUEST copies of ``png``; (answers, MB risen)."""
    files = [("file", (f"{i}.png", png, "image/png")) for i in range(PER_REQUEST)]
    before = server.reset_peak()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.url}/v1/predict", files=files,
                                                     timeout=180), range(clients)))
    return answers, (server.peak() - before) / 1024


def test_default_limits_refuse_the_request_from_its_headers(big_png: bytes) -> None:
    server = Server({})
    try:
        answers, rise = _flood(server, big_png)
    finally:
        server.stop()
    assert [r.status_code for r in answers] == [413] * CLIENTS, [r.text for r in answers]
    err = answers[0].json()["error"]
    assert err["code"] == "too_many_request_pixels" and "400000000" in err["message"], err
    assert rise < 50, rise  # nothing was decoded


def test_decode_budget_bounds_memory_of_concurrent_large_requests(big_png: bytes) -> None:
    server = Server({"max_request_pixels": PER_REQUEST * SIDE * SIDE,
                     "max_decode_pixels": SIDE * SIDE, "timeout_s": 170})
    try:
        answers, rise = _flood(server, big_png)
        info = httpx.get(f"{server.url}/v1/info").json()
    finally:
        server.stop()
    codes = sorted(r.status_code for r in answers)
    # one request decoding, one waiting for it, the other six refused; a slow machine may see
    # the first finish before the last arrive, so only the kinds of answer are certain
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(p["label"] == "red" for r in answers if r.status_code == 200
               for p in r.json()["predictions"])
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["error"]["code"] == "overloaded" and busy.headers["retry-after"]
    assert info["max_decode_pixels"] == SIDE * SIDE
    assert info["max_request_pixels"] == PER_REQUEST * SIDE * SIDE
    print(f"peak RSS rise {rise:.0f} MB, answers {codes}")
    assert rise < MAX_RISE_MB, rise
