"""graft serve end to end: the real command in a subprocess (uvicorn on loopback) serving a tiny
hymenoptera run, and in-process apps serving the real linear probe, an ONNX bundle and a text run.

- predictions are graft predict's numbers (run directory) and BundlePredictor's (ONNX bundle);
- concurrent requests are batched (the batch-size histogram), a load test at concurrency 8 and 32
  has zero errors and the server's memory does not grow between two rounds;
- chunked uploads over the limit get 413 from the real server; CLI mistakes are one-line errors;
- the API is fuzzed from its OpenAPI schema (schemathesis): no 5xx;
- the web page works in a real Chromium: upload a validation image, see the predicted label and
  the Grad-CAM overlay;
- drift: serving only bees moves the class PSI; an older run without reference.json gets one
  computed from its validation split.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, shared_dataset

from .conftest import TINY, graft

pytestmark = pytest.mark.integration
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def val_images(data: Path, per_class: int) -> list[Path]:
    return [f for cls in ("ants", "bees") for f in sorted((data / "val" / cls).glob("*.jpg"))
            [:per_class]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "tiny"
    graft("train", "--data", shared_dataset("hymenoptera_256"), "--out", out, "--epochs", "1",
          *TINY)
    return out


class Server:
    def __init__(self, run: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "graftkit.cli.main", "serve", str(run), "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 120
        self.url = ""
        while not self.url and time.monotonic() < deadline:
            found = [m for ln in self.lines if (m := re.search(r"http://127\.0\.0\.1:\d+", ln))]
            self.url = found[0].group(0) if found else ""
            time.sleep(0.05)
        assert self.url, "".join(self.lines)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("server not ready:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics").text

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(tiny_run: Path):  # noqa: ANN201
    s = Server(tiny_run, "--max-wait-ms", "10")
    yield s
    s.stop()


def _upload(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _hist(metrics: str, name: str) -> tuple[float, float]:
    get = {ln.split()[0]: float(ln.split()[1]) for ln in metrics.splitlines()
           if ln.startswith((f"{name}_count ", f"{name}_sum "))}
    return get[f"{name}_count"], get[f"{name}_sum"]


def _same(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float) -> None:
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert abs(g["prob"] - w["prob"]) <= tol
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]
        assert max(abs(a["prob"] - b["prob"]) for a, b in zip(g["top"], w["top"])) <= tol


def test_served_predictions_equal_graft_predict(server: Server, tiny_run: Path) -> None:
    images = val_images(shared_dataset("hymenoptera_256"), 3)
    want = json.loads(graft("predict", tiny_run, *images, "--json", "-k", "2").stdout)
    r = httpx.post(f"{server.url}/v1/predict?topk=2", files=_upload(images), timeout=60)
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert [g["input"] for g in got] == [p.name for p in images]
    _same(got, want, 1e-6)
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in images]
    r = httpx.post(f"{server.url}/v1/predict?topk=2", json={"images": b64}, timeout=60)
    _same(r.json()["predictions"], want, 1e-6)


def test_real_server_batches_concurrent_requests(server: Server) -> None:
    image = val_images(shared_dataset("hymenoptera_256"), 1)[0]
    count0, sum0 = _hist(server.metrics(), "graft_batch_size")
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.post(f"{server.url}/v1/predict",
                                                    files=_upload([image])).status_code,
                              range(48)))
    assert codes == [200] * 48
    count, total = _hist(server.metrics(), "graft_batch_size")
    assert total - sum0 == 48
    assert count - count0 < 48, "every request ran in a model call of its own"


def _round(url: str, payloads: list[bytes], n: int, concurrency: int) -> list[int]:
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(i: int) -> int:
            files = [("file", (f"{i}.jpg", payloads[i % len(payloads)], "image/jpeg"))]
            return client.post(f"{url}/v1/predict", files=files).status_code

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(n)))


def test_load_rounds_have_no_errors_and_stable_memory(server: Server) -> None:
    payloads = [p.read_bytes() for p in val_images(shared_dataset("hymenoptera_256"), 10)]
    rss = []
    for _ in range(2):
        for concurrency in (8, 32):
            codes = _round(server.url, payloads, 120, concurrency)
            assert codes == [200] * 120, sorted(set(codes))
        rss.append(server.rss_mb())
    assert rss[1] - rss[0] < 25, f"server RSS grew from {rss[0]:.0f} to {rss[1]:.0f} MB"
    metrics = server.metrics()
    assert 'graft_errors_total{kind="internal"}' not in metrics


def test_real_server_refuses_oversized_uploads(server: Server) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def chunks():  # noqa: ANN202 - 12 MB, no Content-Length: Transfer-Encoding chunked
        for _ in range(12_000):
            yield b"A" * 1000

    try:
        conn.request("POST", "/v1/predict", body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json"})
    except OSError:
        pass  # the server may stop reading once it has answered
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "body_too_large"
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/v1/predict")  # a huge declared length: refused before the body
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(50_000_000))
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413
    conn.close()


def test_cli_mistakes_are_one_line_errors(tiny_run: Path, server: Server, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    proc = graft("serve", tiny_run, "--host", "0.0.0.0", check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "--token" in proc.stderr
    from graftkit.cli.main import main

    port = server.url.rsplit(":", 1)[1]
    cases = [([str(tmp_path / "nope")], "does not exist"),
             ([str(tmp_path)], "neither a run directory"),
             ([str(tiny_run), "--token", "abc"], "too short"),
             ([str(tiny_run), "--port", port], "cannot listen"),
             ([str(tiny_run), "--max-batch", "0"], "--max-batch 0"),
             ([str(tiny_run / "meta.json")], "is a file")]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["graft", "serve", *args])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and message in err, err
        assert err.count("\n") == 1


def test_schemathesis_fuzz_finds_no_server_errors(server: Server) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/explain", "/v1/monitor",
                                              "/metrics", "/healthz", "/readyz", "/v1/info"}
    calls = 0
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case) -> None:  # noqa: ANN001
                nonlocal calls
                calls += 1
                case.call_and_validate(base_url=server.url, checks=[not_a_server_error],
                                       timeout=60)

            try:
                fuzz()
            except Unsatisfiable:  # nothing invalid to send (a GET without parameters)
                assert mode == GenerationMode.NEGATIVE
    assert calls >= 50
    five = re.findall(r'graft_requests_total\{route="([^"]+)",status="5\d\d"\}', server.metrics())
    assert set(five) <= {"/readyz"}, five  # /readyz said 503 while the model loaded


def test_web_page_in_chromium(browser, server: Server) -> None:  # noqa: ANN001
    image = val_images(shared_dataset("hymenoptera_256"), 1)[0]
    want = httpx.post(f"{server.url}/v1/predict", files=_upload([image]),
                      timeout=60).json()["predictions"][0]
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    messages: list[str] = []
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.goto(server.url + "/", wait_until="load")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert "test_efficientnet" in page.text_content("#model")
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#result:not([hidden])", timeout=30_000)  # (the page's CSP forbids
    # eval, so no wait_for_function here)
    assert page.text_content("#label") == want["label"]
    assert page.text_content("#prob") == f"({100 * want['prob']:.1f}%)"
    bars = page.eval_on_selector_all(".bar span:first-child", "els => els.map(e => e.textContent)")
    assert bars == [t["label"] for t in want["top"]]
    page.wait_for_selector("#overlay-fig:not([hidden])", timeout=60_000)  # Grad-CAM (run dir)
    width = page.eval_on_selector("#overlay", "img => img.complete ? img.naturalWidth : 0")
    assert width == 64  # the model's view, 64 px for the tiny model
    errors = [m for m in messages if m.startswith(("error", "pageerror"))]
    assert not errors and not failed, (errors, failed)
    out = Path(os.environ.get("GRAFT_TEST_OUTPUT", ROOT / "test-output"))
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "serve.png"), full_page=True)
    page.close()


def _serve_in_process(path: Path, **settings: Any):  # noqa: ANN202 - a TestClient context
    from starlette.testclient import TestClient

    from graftkit.serve import create_app, open_backend
    from graftkit.serve.app import Settings

    return TestClient(create_app(open_backend(path), Settings(**settings)))


def _wait(client: Any, ready: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready(client)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the server")


def test_real_model_drift_and_gradcam(probe_run: Path) -> None:
    """The linear probe (pretrained, ~95% val accuracy): served numbers equal Run.predict;
    serving only bees moves the class PSI far past 0.25; Grad-CAM comes back as a PNG."""
    from PIL import Image

    from graftkit import Run

    data = shared_dataset("hymenoptera_256")
    bees = sorted((data / "val" / "bees").glob("*.jpg"))[:40]
    with _serve_in_process(probe_run) as c:
        _wait(c, lambda c: c.get("/readyz").status_code == 200)
        ref = json.loads((probe_run / "reference.json").read_text())
        preds = []
        for start in range(0, len(bees), 8):
            r = c.post("/v1/predict", files=_upload(bees[start:start + 8]))
            preds += r.json()["predictions"]
        _same(preds[:8], Run(probe_run).predict(bees[:8]), 1e-5)
        m = c.get("/v1/monitor").json()
        assert m["reference"]["n"] == ref["n"] == 153
        live_bees = sum(p["label"] == "bees" for p in preds) / len(preds)
        assert m["classes"]["live"]["bees"] == pytest.approx(live_bees) and live_bees > 0.8
        assert 0.3 < ref["predicted"]["bees"] < 0.7
        assert m["classes"]["psi"] > 0.25 and m["status"] == "large"
        gauge = re.search(r"^graft_drift_class_psi (\S+)$", c.get("/metrics").text, re.M)
        assert float(gauge.group(1)) == pytest.approx(m["classes"]["psi"])

        r = c.post("/v1/explain", files=_upload(bees[:1]))
        assert r.status_code == 200, r.text
        ex = r.json()
        assert ex["label"] == preds[0]["label"] and ex["method"] == "gradcam"
        overlay = Image.open(io.BytesIO(base64.b64decode(ex["overlay"].split(",", 1)[1])))
        assert overlay.format == "PNG" and overlay.width == 224 and overlay.height > 224


def test_older_run_gets_its_reference_computed(tiny_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old)
    want = json.loads((old / "reference.json").read_text())
    (old / "reference.json").unlink()
    with _serve_in_process(old) as c:
        m = _wait(c, lambda c: (m := c.get("/v1/monitor").json())["reference"] and m)
        assert m["reference"]["n"] == 153 and m["reference_error"] is None
    got = json.loads((old / "reference.json").read_text())  # stored for next time
    assert got["predicted"] == want["predicted"] and got["labels"] == want["labels"]
    assert got["inputs"]["n"] == want["inputs"]["n"]
    assert got["confidence"]["mean"] == pytest.approx(want["confidence"]["mean"], abs=1e-6)


def test_onnx_bundle_is_served_like_bundle_predictor(tiny_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from graftkit.export import BundlePredictor, export_run

    bundle = tmp_path / "bundle"
    b = export_run(tiny_run, "onnx", bundle)
    assert "reference.json" in b["files"]
    images = val_images(shared_dataset("hymenoptera_256"), 3)
    want = BundlePredictor(bundle).predict(images, topk=2)
    with _serve_in_process(bundle) as c:
        _wait(c, lambda c: c.get("/readyz").status_code == 200)
        info = c.get("/v1/info").json()
        assert info["source"] == "onnx-bundle" and info["explain"] is False
        got = c.post("/v1/predict?topk=2", files=_upload(images)).json()["predictions"]
        _same(got, want, 1e-6)
        assert c.post("/v1/explain", files=_upload(images[:1])).status_code == 501
        m = _wait(c, lambda c: (m := c.get("/v1/monitor").json())["reference"] and m)
        assert m["reference"]["n"] == 153


def test_text_run_is_served(tmp_path: Path) -> None:
    import csv

    from graftkit import Run

    rows = list(csv.reader((shared_dataset("sms_spam") / "train.csv").open(encoding="utf-8")))
    take = [r[:2] for c in ("ham", "spam") for r in [x for x in rows[1:] if x[1] == c][:30]]
    data = tmp_path / "sms.csv"
    with data.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label"], *take])
    run = tmp_path / "text"
    graft("train", "--data", data, "--model", "paraphrase-MiniLM-L3-v2", "--epochs", "2",
          "train.threads=2", "--out", run)
    texts = ["WINNER!! Claim your free prize now, call 0800 123", "See you at lunch tomorrow?"]
    with _serve_in_process(run) as c:
        _wait(c, lambda c: c.get("/readyz").status_code == 200)
        assert c.get("/v1/info").json()["modality"] == "text"
        got = c.post("/v1/predict", json={"texts": texts}).json()["predictions"]
        _same(got, Run(run).predict(texts), 1e-5)
        assert [g["input"] for g in got] == texts
        r = c.post("/v1/predict", json={"texts": ["  "]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "empty_text"
        m = c.get("/v1/monitor").json()
        assert m["inputs"]["words"]["live_mean"] == pytest.approx(
            (len(texts[0].split()) + len(texts[1].split())) / 2)
        assert m["reference"]["n"] == 12  # the 20% validation split of 60 texts
