"""The graft serve app around a small numpy model: every client mistake is a 4xx JSON error (never
a 500), limits, auth, timeouts, overload, readiness, metrics, batching and drift, in-process.

The model is a stand-in whose answer is readable from the input: the class is the dominant
colour channel of the image (red, green, blue). The real models are served in
tests/integration/test_serve.py.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from starlette.testclient import TestClient  # noqa: E402

from graftkit.errors import GraftError  # noqa: E402
from graftkit.evaluate.reference import build_reference  # noqa: E402
from graftkit.modalities import get as get_modality  # noqa: E402
from graftkit.serve import create_app  # noqa: E402
from graftkit.serve.app import Settings  # noqa: E402

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
TOKEN = "t0ps3cret-t0ps3cret"


class ColourModel:
    """Classifies an image by its dominant channel; texts by their length (short/long)."""

    source, name, path, explainable = "run", "colour", Path("/nowhere"), False

    def __init__(self, modality: str = "image", delay: float = 0.0) -> None:
        self.modality, self.task = get_modality(modality), "classification"
        self.classes = ["short", "long"] if modality == "text" else list(COLOURS)
        self.delay, self.sizes = delay, []
        self.loaded = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.fail_load = False
        self.gate: threading.Event | None = None  # when set up, prepare/explain wait for it
        self.entered = threading.Event()

    def _wait_at_gate(self) -> None:
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(10)

    def load(self) -> None:
        self.release.wait(10)
        if self.fail_load:
            raise RuntimeError("weights damaged")
        self.loaded.set()

    def prepare(self, item: Any) -> np.ndarray:
        self._wait_at_gate()
        if self.modality.name == "text":
            return np.array([10.0 - len(item), len(item) - 10.0])
        return np.asarray(item, np.float32).mean((0, 1)) / 20  # (3,) logits

    def forward(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        time.sleep(self.delay)
        self.sizes.append(len(batch))
        return list(np.stack(batch))

    def describe(self, row: np.ndarray, topk: int) -> dict[str, Any]:
        p = np.exp(row - row.max())
        p /= p.sum()
        order = np.argsort(-p)[:topk]
        i = int(order[0])
        return {"label": self.classes[i], "prob": float(p[i]),
                "top": [{"label": self.classes[j], "prob": float(p[j])} for j in order]}

    def warmup(self) -> None:
        pass

    def has_reference(self) -> bool:
        return True

    def reference(self) -> dict[str, Any]:
        k = len(self.classes)
        pred = np.arange(60) % k
        probs = np.full((60, k), 0.01)
        probs[np.arange(60), pred] = 0.98
        return build_reference("classification", self.modality.name, self.classes,
                               self.modality.input_reference([]), pred, probs, pred)

    def explain(self, image: Any, topk: int) -> dict[str, Any]:
        if not self.explainable:
            raise GraftError("no")
        self._wait_at_gate()
        row = self.prepare(image)
        return {**self.describe(row, topk), "method": "colour", "overlay": "data:,"}


def png(colour: str = "red", size: tuple[int, int] = (24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def serving(model: Any = None, wait: bool = True, **settings: Any):  # noqa: ANN201
    model = model or ColourModel()
    app = create_app(model, Settings(**settings))
    with TestClient(app) as client:
        if wait:
            assert model.loaded.wait(10)
            for _ in range(100):
                if client.get("/readyz").status_code == 200:
                    break
                time.sleep(0.02)
        yield client


def files(*colours: str) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{c}.png", png(c), "image/png")) for c in colours]


def test_predict_multipart_and_json() -> None:
    with serving() as c:
        r = c.post("/v1/predict", files=files("red", "blue", "green"))
        assert r.status_code == 200
        got = r.json()["predictions"]
        assert [p["input"] for p in got] == ["red.png", "blue.png", "green.png"]
        assert [p["label"] for p in got] == ["red", "blue", "green"]
        assert all(len(p["top"]) == 3 and "value" not in p for p in got)
        b64 = base64.b64encode(png("green")).decode()
        r = c.post("/v1/predict?topk=1", json={"images": [b64, f"data:image/png;base64,{b64}"]})
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == ["green", "green"]
        assert [p["input"] for p in got] == ["images[0]", "images[1]"]
        assert [len(p["top"]) for p in got] == [1, 1]


def _bad_requests() -> list[tuple[str, dict[str, Any], int, str]]:
    truncated = png("red")[:40]
    b64 = base64.b64encode(png()).decode()
    return [
        ("corrupt image", {"files": [("file", ("x.png", truncated, "image/png"))]}, 400,
         "bad_image"),
        ("empty file", {"files": [("file", ("x.png", b"", "image/png"))]}, 400, "bad_image"),
        ("not an image", {"files": [("file", ("x.pdf", b"%PDF-1.4 ...", "application/pdf"))]},
         400, "unsupported_type"),
        ("bad base64", {"json": {"images": ["not base64!"]}}, 400, "bad_base64"),
        ("json list", {"json": [b64]}, 400, "bad_request"),
        ("images not a list", {"json": {"images": b64}}, 400, "bad_request"),
        ("unknown key", {"json": {"image": [b64]}}, 400, "bad_request"),
        ("no inputs", {"json": {"images": []}}, 400, "no_input"),
        ("nothing", {"json": {}}, 400, "no_input"),
        ("texts to an image model", {"json": {"texts": ["hi"]}}, 400, "wrong_modality"),
        ("broken json", {"content": b"{\"images\": [", "headers": {
            "content-type": "application/json"}}, 400, "bad_request"),
        ("deep json", {"content": b"[" * 100_000, "headers": {
            "content-type": "application/json"}}, 400, "bad_request"),
        ("too many", {"json": {"images": [b64] * 65}}, 400, "bad_request"),
        ("no file field", {"data": {"other": "x"}, "files": [("image", ("a.png", png(),
                                                                        "image/png"))]},
         400, "bad_request"),
        ("file as text", {"files": [("file", (None, b"not a file"))]}, 400, "bad_request"),
        ("form urlencoded", {"data": {"file": "x"}}, 415, "unsupported_media_type"),
        ("broken multipart", {"content": b"--xyz\r\ngarbage", "headers": {
            "content-type": "multipart/form-data; boundary=xyz"}}, 400, "no_input"),
        ("wrong type", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("no type", {"content": b"hello"}, 415, "unsupported_media_type"),
    ]


@pytest.mark.parametrize(("what", "kwargs", "status", "code"), _bad_requests(),
                         ids=[b[0] for b in _bad_requests()])
def test_client_mistakes_are_4xx_json(what: str, kwargs: dict[str, Any], status: int,
                                      code: str) -> None:
    with serving() as c:
        r = c.post("/v1/predict", **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["error"]["code"] == code and body["error"]["message"], body
        metrics = c.get("/metrics").text
        assert f'graft_errors_total{{kind="{code}"}} 1.0' in metrics


def test_bad_query_and_unknown_routes_are_json() -> None:
    with serving() as c:
        r = c.post("/v1/predict?topk=0", files=files("red"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = c.get("/v1/predict")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_text_model_takes_texts_and_refuses_empty_ones() -> None:
    with serving(ColourModel("text")) as c:
        r = c.post("/v1/predict", json={"texts": ["tiny", "a considerably longer text"]})
        assert [p["label"] for p in r.json()["predictions"]] == ["short", "long"]
        r = c.post("/v1/predict", files=[("text", (None, b"hello"))])
        assert r.json()["predictions"][0]["input"] == "hello"
        for body in ({"texts": ["fine", "   "]}, {"texts": [""]}):
            r = c.post("/v1/predict", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "empty_text"
        r = c.post("/v1/predict", json={"images": [base64.b64encode(png()).decode()]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_modality"


def test_body_limit_413_declared_and_chunked() -> None:
    with serving(max_body_bytes=20_000) as c:
        big = ("file", ("big.png", b"\x89PNG" + b"0" * 30_000, "image/png"))
        r = c.post("/v1/predict", files=[big])
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # noqa: ANN202 - no Content-Length
            yield b'{"images": ["'
            for _ in range(40):
                yield b"A" * 1000
            yield b'"]}'

        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert c.post("/v1/predict", files=files("red")).status_code == 200


def test_pixel_limit_413() -> None:
    with serving(max_pixels=10_000) as c:
        assert c.post("/v1/predict", files=files("red")).status_code == 200  # 24x16
        r = c.post("/v1/predict", files=[("file", ("big.png", png("red", (200, 100)),
                                                   "image/png"))])
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_pixels"
        assert "200x100" in r.json()["error"]["message"]


def test_request_pixel_limit_413_from_the_headers() -> None:
    model = ColourModel()
    with serving(model, max_request_pixels=3 * 24 * 16) as c:
        assert c.post("/v1/predict", files=files("red", "green", "blue")).status_code == 200
        model.gate = threading.Event()  # a decode would hang: none may start
        r = c.post("/v1/predict", files=files("red", "green", "blue", "red"))
        assert r.status_code == 413 and not model.entered.is_set()
        err = r.json()["error"]
        assert err["code"] == "too_many_request_pixels", err
        assert "4 images of 1536 pixels" in err["message"] and "1152" in err["message"]
        # a corrupt header is found before anything is decoded too
        bad = ("file", ("x.png", png()[:30], "image/png"))
        r = c.post("/v1/predict", files=[*files("red"), bad])
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_image"
        assert not model.entered.is_set()
        info = c.get("/v1/info").json()
        assert info["max_request_pixels"] == 1152 and info["max_decode_pixels"] == 50_000_000


def _until(cond: Any) -> None:
    for _ in range(500):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("timed out waiting")


def test_decode_budget_full_is_503_with_retry_after() -> None:
    """One image's pixels decoded at once: a second request waits for it, a third is refused
    at once; the two served answer 200, and the budget is free after."""
    model = ColourModel()
    model.gate = threading.Event()
    with serving(model, max_decode_pixels=24 * 16) as c, ThreadPoolExecutor(2) as pool:
        budget = c.app.state.graft.budget
        first = pool.submit(c.post, "/v1/predict", files=files("red"))
        assert model.entered.wait(5) and budget.used == 24 * 16
        second = pool.submit(c.post, "/v1/predict", files=files("blue"))
        _until(lambda: budget.queued == 24 * 16)
        r = c.post("/v1/predict", files=files("green"))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded", r.json()
        model.gate.set()
        assert [f.result().json()["predictions"][0]["label"] for f in (first, second)] == [
            "red", "blue"]
        _until(lambda: budget.used == 0)
        assert budget.queued == 0
        assert 'graft_errors_total{kind="overloaded"} 1.0' in c.get("/metrics").text


def test_timed_out_waiting_for_the_budget_is_503_and_the_budget_recovers() -> None:
    model = ColourModel()
    model.gate = threading.Event()
    with serving(model, max_decode_pixels=24 * 16, timeout_s=0.5) as c, \
            ThreadPoolExecutor(1) as pool:
        budget = c.app.state.graft.budget
        decoding = pool.submit(c.post, "/v1/predict", files=files("red"))
        assert model.entered.wait(5)
        r = c.post("/v1/predict", files=files("blue"))  # waits, never gets the pixels
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert r.headers["retry-after"]
        assert decoding.result().status_code == 504  # it was decoding: a plain timeout
        assert budget.used == 24 * 16  # its worker still holds the pixels ...
        model.gate.set()
        _until(lambda: budget.used == 0)  # ... until it stops
        assert budget.queued == 0
        model.gate = None
        assert c.post("/v1/predict", files=files("green")).json()["predictions"][0][
            "label"] == "green"


def test_texts_cost_no_pixels() -> None:
    with serving(ColourModel("text"), max_request_pixels=1, max_decode_pixels=1) as c:
        r = c.post("/v1/predict", json={"texts": ["tiny", "a considerably longer text"] * 8})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 16
        assert c.app.state.graft.budget.used == 0


def test_explain_holds_its_pixels_until_it_is_done() -> None:
    model = ColourModel()
    model.explainable = True
    with serving(model) as c, ThreadPoolExecutor(1) as pool:
        budget = c.app.state.graft.budget
        model.gate = threading.Event()
        answer = pool.submit(c.post, "/v1/explain", files=files("blue"))
        assert model.entered.wait(5)
        assert budget.used == 24 * 16  # the decoded image is alive, and counted
        model.gate.set()
        r = answer.result()
        assert r.status_code == 200 and r.json()["label"] == "blue", r.text
        _until(lambda: budget.used == 0)
        r = c.post("/v1/explain", files=files("red", "blue"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "one_image"


def test_token_protects_everything_but_the_page_and_probes() -> None:
    with serving(token=TOKEN) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert c.get("/").status_code == 200
        for method, path in (("post", "/v1/predict"), ("get", "/metrics"),
                             ("get", "/v1/monitor"), ("get", "/v1/info")):
            r = getattr(c, method)(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = c.post("/v1/predict", files=files("red"), headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        r = c.post("/v1/predict", files=files("red"), headers=ok)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "red"
        assert c.get("/v1/info", headers=ok).json()["auth"] is True


def test_timeout_is_504_and_the_server_recovers() -> None:
    model = ColourModel(delay=0.6)
    with serving(model, timeout_s=0.2) as c:
        r = c.post("/v1/predict", files=files("red"))
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        model.delay = 0.0
        time.sleep(0.7)
        assert c.post("/v1/predict", files=files("blue")).json()["predictions"][0][
            "label"] == "blue"


def test_full_queue_is_503_with_retry_after() -> None:
    model = ColourModel(delay=0.3)
    with serving(model, max_batch=1, max_queue=2, max_wait_ms=0) as c:
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda _: c.post("/v1/predict", files=files("red")), range(8)))
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert busy.json()["error"]["code"] == "overloaded" and busy.headers["retry-after"]


def test_not_ready_until_loaded_and_failed_load_reported() -> None:
    model = ColourModel()
    model.release.clear()
    with serving(model, wait=False) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = c.post("/v1/predict", files=files("red"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        model.release.set()
        assert model.loaded.wait(5)
        for _ in range(100):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.02)
        assert c.post("/v1/predict", files=files("red")).status_code == 200
    broken = ColourModel()
    broken.fail_load = True
    with serving(broken, wait=False) as c:
        for _ in range(100):
            r = c.get("/readyz")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert r.status_code == 503 and r.json()["status"] == "failed"
        assert "weights damaged" in r.json()["error"]


def _histogram(metrics: str, name: str) -> tuple[float, float]:
    """(count, sum) of a Prometheus histogram in exposition text."""
    vals = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in metrics.splitlines()
            if ln.startswith(name + "_count") or ln.startswith(name + "_sum")}
    return vals[f"{name}_count"], vals[f"{name}_sum"]


def test_concurrent_requests_are_batched() -> None:
    model = ColourModel(delay=0.05)
    with serving(model, max_batch=8, max_wait_ms=30) as c:
        with ThreadPoolExecutor(16) as pool:
            rs = list(pool.map(lambda i: c.post("/v1/predict", files=files(list(COLOURS)[i % 3])),
                               range(32)))
        assert [r.json()["predictions"][0]["label"] for r in rs] == [
            list(COLOURS)[i % 3] for i in range(32)]
        count, total = _histogram(c.get("/metrics").text, "graft_batch_size")
        assert total == 32 and count == len(model.sizes) and count < 32 / 2  # grouped
        assert max(model.sizes) > 1 and max(model.sizes) <= 8


def test_batching_off_runs_one_input_per_call() -> None:
    model = ColourModel(delay=0.01)
    with serving(model, max_batch=1) as c:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: c.post("/v1/predict", files=files("red")), range(16)))
        assert _histogram(c.get("/metrics").text, "graft_batch_size") == (16, 16)


def test_metrics_and_monitor_follow_the_traffic() -> None:
    with serving() as c:
        for _ in range(12):
            c.post("/v1/predict", files=files("red", "green", "blue"))
        m = c.get("/v1/monitor").json()
        assert m["n"] == 36 and m["status"] == "stable" and m["classes"]["psi"] < 0.01
        for _ in range(20):
            c.post("/v1/predict", files=files("red", "red", "red"))
        m = c.get("/v1/monitor").json()
        assert m["classes"]["live"]["red"] == pytest.approx(72 / 96)
        assert m["classes"]["psi"] > 0.25 and m["status"] == "large"
        text = c.get("/metrics").text
        psi_line = next(ln for ln in text.splitlines() if ln.startswith("graft_drift_class_psi "))
        assert float(psi_line.split()[1]) == pytest.approx(m["classes"]["psi"])
        assert 'graft_predictions_total{label="red"} 72.0' in text
        assert 'graft_requests_total{route="/v1/predict",status="200"} 32.0' in text
        assert _histogram(text, "graft_confidence")[0] == 96
        assert 'graft_request_latency_seconds_count{route="/v1/predict"} 32.0' in text
        assert "graft_model_ready 1.0" in text
        assert 'graft_drift_input_shift_std{stat="brightness"}' in text


def test_two_apps_have_separate_metrics() -> None:
    with serving() as a, serving() as b:
        a.post("/v1/predict", files=files("red"))
        assert 'label="red"' in a.get("/metrics").text
        assert 'label="red"' not in b.get("/metrics").text


def test_page_info_and_schema() -> None:
    with serving() as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert "http://" not in page.text and "https://" not in page.text  # no CDN
        info = c.get("/v1/info").json()
        assert info["classes"] == list(COLOURS) and info["modality"] == "image"
        assert info["auth"] is False and info["max_batch"] == 16
        spec = c.get("/openapi.json").json()
        body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}
        r = c.post("/v1/explain", files=files("red"))
        assert r.status_code == 501 and r.json()["error"]["code"] == "explain_unavailable"


def test_no_pickle_in_the_server() -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "graftkit" / "serve"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for banned in ("pickle", "torch.load(", "joblib", "marshal"):
            assert banned not in text, f"{f.name} mentions {banned}"
