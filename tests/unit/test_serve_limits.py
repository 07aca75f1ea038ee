"""graft serve's input limits and bind rules: body size counted on the stream (declared and
chunked), the pixel limit checked on the header (bounded memory against decompression bombs),
corrupt and unsupported files, loopback/token rules, the bearer check."""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from graftkit.errors import GraftError  # noqa: E402
from graftkit.serve.limits import BodyLimit, RequestRejected, decode_image  # noqa: E402
from graftkit.serve.security import BearerAuth, check_bind, is_loopback  # noqa: E402


def _echo_app(seen: list[int]):  # noqa: ANN202 - an ASGI app
    """Reads the whole body and answers with its length; records how much it got."""

    async def app(scope, receive, send):  # noqa: ANN001, ANN202
        n, more = 0, True
        while more:
            msg = await receive()
            n += len(msg.get("body", b""))
            seen.append(n)
            more = msg.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(n).encode()})

    return app


def test_body_limit_declared_length_is_refused_before_reading() -> None:
    seen: list[int] = []
    rejected: list[str] = []
    client = TestClient(BodyLimit(_echo_app(seen), 1000, on_reject=rejected.append))
    r = client.post("/", content=b"x" * 1001)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert seen == [] and rejected == ["body_too_large"]  # the app never ran
    assert client.post("/", content=b"x" * 1000).text == "1000"


def _stream(middleware, chunks: int, size: int = 1000) -> tuple[list[dict], int]:  # noqa: ANN001
    """Drive ``middleware`` with a body sent in ``chunks`` messages and no Content-Length (as
    a server hands over a chunked upload); returns what it sent and how many chunks it pulled."""
    sent: list[dict] = []
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"y" * size, "more_body": pulled < chunks}

    async def send(msg: dict) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(middleware(scope, receive, send))
    return sent, pulled


def test_body_limit_counts_chunked_uploads_on_the_stream() -> None:
    seen: list[int] = []
    sent, pulled = _stream(BodyLimit(_echo_app(seen), 10_000), chunks=1000)
    assert sent[0]["status"] == 413
    assert b"body_too_large" in sent[1]["body"]
    assert pulled == 11  # stopped reading at the first chunk over the limit, not 1000 chunks
    assert max(seen) == 10_000  # the app never saw the chunk that went over
    seen.clear()
    sent, pulled = _stream(BodyLimit(_echo_app(seen), 10_000), chunks=10)
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"10000"


def test_body_limit_rejects_a_malformed_length() -> None:
    client = TestClient(BodyLimit(_echo_app([]), 1000))
    r = client.post("/", content=b"abc", headers={"content-length": "lots"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of zeros: tiny on the wire, width*height bytes decoded."""
    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                              0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def test_decode_image_converts_like_the_training_loader() -> None:
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent: white, as in training
    img = decode_image(_png(rgba))
    assert img.mode == "RGB" and img.size == (20, 10)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    gray16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(decode_image(_png(gray16)))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(("data", "status", "code"), [
    (b"", 400, "bad_image"),
    (b"hello, not an image", 400, "unsupported_type"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 400, "unsupported_type"),
    (b"%PDF-1.4\n1 0 obj\n", 400, "unsupported_type"),
])
def test_decode_image_refuses_non_images(data: bytes, status: int, code: str) -> None:
    with pytest.raises(RequestRejected) as e:
        decode_image(data)
    assert (e.value.status, e.value.code) == (status, code)


def test_decode_image_refuses_truncated_and_corrupt_files() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buf, format="JPEG")
    jpeg = buf.getvalue()
    for data in (jpeg[: len(jpeg) // 2], jpeg[:200] + b"\x00" * 50 + jpeg[250:400]):
        with pytest.raises(RequestRejected) as e:
            decode_image(data)
        assert e.value.status == 400 and e.value.code == "bad_image", e.value.message


def test_pixel_limit_is_checked_on_the_header() -> None:
    ok = bomb_png(100, 100)
    assert decode_image(ok, max_pixels=10_000).size == (100, 100)
    with pytest.raises(RequestRejected) as e:
        decode_image(bomb_png(101, 100), max_pixels=10_000)
    assert e.value.status == 413 and e.value.code == "too_many_pixels"
    assert "101x100" in e.value.message


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path) -> None:  # noqa: ANN001
    """A 6000x6000 PNG of zeros (~35 kB) decodes to 36 MB gray, 108 MB RGB. Refused, the
    process's peak memory barely moves; decoded (a higher limit, the control), it jumps."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(6000, 6000))
    assert bomb.stat().st_size < 200_000
    script = textwrap.dedent(f"""
        import resource, sys
        from graftkit.serve.limits import RequestRejected, decode_image
        data = open({str(bomb)!r}, "rb").read()

        def status(key):  # kB, from /proc/self/status
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1])

        # Reset the peak to the current size, so the imports' own peak does not hide the
        # decode's (Linux: writing 5 to clear_refs resets VmHWM).
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before, peak = status("VmRSS:"), lambda: status("VmHWM:")
        except OSError:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            img = decode_image(data, max_pixels=int(sys.argv[1]))
            outcome = "decoded"
        except RequestRejected as e:
            outcome = str(e.status)
        print(outcome, (peak() - before) / 1024)  # MB
    """)

    def peak_growth(max_pixels: int) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", script, str(max_pixels)], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0], float(out[1])

    outcome, grown = peak_growth(25_000_000)
    assert outcome == "413" and grown < 10, grown
    outcome, grown = peak_growth(40_000_000)  # the control: decoding it does cost memory
    assert outcome == "decoded" and grown > 60, grown


def test_pillows_own_bomb_limit_is_a_413_too() -> None:
    with pytest.raises(RequestRejected) as e:  # over twice Pillow's MAX_IMAGE_PIXELS (180 MP)
        decode_image(bomb_png(40_000, 10_000), max_pixels=10**12)
    assert e.value.status == 413


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False),
    ("example.com", False)])
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_needs_a_token_or_insecure() -> None:
    check_bind("127.0.0.1", None, False)
    with pytest.raises(GraftError, match="--token"):
        check_bind("0.0.0.0", None, False)
    check_bind("0.0.0.0", None, True)
    check_bind("0.0.0.0", "s" * 16, False)
    with pytest.raises(GraftError, match="too short"):
        check_bind("0.0.0.0", "short", False)


def test_bearer_auth() -> None:
    rejected: list[str] = []
    token = "correct-horse-battery-staple"
    client = TestClient(BearerAuth(_echo_app([]), token, on_reject=rejected.append))
    assert client.post("/healthz").status_code == 200  # public
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token},
                    {"Authorization": f"Bearer {token}x"}, {"Authorization": f"Basic {token}"}):
        r = client.post("/v1/predict", content=b"abc", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert rejected == ["unauthorized"] * 5
    r = client.post("/v1/predict", content=b"abc", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.text == "3"


def _run(coro):  # noqa: ANN001, ANN202
    return asyncio.run(coro)


def test_decode_budget_serves_in_arrival_order_and_sheds_beyond_its_waiting_room() -> None:
    from graftkit.serve.limits import DecodeBudget

    async def scenario() -> list[str]:
        budget, order = DecodeBudget(100), []
        a, b, c, d = (budget.grant() for _ in range(4))
        await a.acquire(60)
        wait_b = asyncio.ensure_future(b.acquire(70))  # does not fit: waits
        await asyncio.sleep(0)
        assert b.waiting and budget.queued == 70
        wait_c = asyncio.ensure_future(c.acquire(10))  # would fit, but b came first
        await asyncio.sleep(0)
        assert c.waiting and budget.used == 60
        with pytest.raises(RequestRejected) as e:  # 70 + 10 waiting, 30 more is over 100
            await d.acquire(30)
        assert (e.value.status, e.value.code) == (503, "overloaded")
        wait_b.add_done_callback(lambda _: order.append("b"))
        wait_c.add_done_callback(lambda _: order.append("c"))
        a.close()
        await asyncio.gather(wait_b, wait_c)
        assert budget.used == 80 and budget.queued == 0 and not b.waiting
        b.close()
        c.close()
        c.close()  # released once
        assert budget.used == 0
        return order

    assert _run(scenario()) == ["b", "c"]


def test_decode_budget_cancelled_waiter_leaves_the_queue() -> None:
    from graftkit.serve.limits import DecodeBudget

    async def scenario() -> None:
        budget = DecodeBudget(100)
        a, b, c = budget.grant(), budget.grant(), budget.grant()
        await a.acquire(100)
        wait_b = asyncio.ensure_future(b.acquire(80))
        wait_c = asyncio.ensure_future(c.acquire(10))
        await asyncio.sleep(0)
        wait_b.cancel()  # a timeout while waiting: b.waiting stays true (the app says 503)
        with pytest.raises(asyncio.CancelledError):
            await wait_b
        assert b.waiting and budget.queued == 10
        a.close()
        await wait_c
        assert budget.used == 10 and c.pixels == 10
        huge = budget.grant()  # more than the whole budget: waits for all of it
        wait_huge = asyncio.ensure_future(huge.acquire(10**9))
        await asyncio.sleep(0)
        assert huge.waiting
        c.close()
        await wait_huge
        assert budget.used == 100
        huge.close()
        assert budget.used == 0

    _run(scenario())


def test_grant_is_held_until_tracked_work_is_done() -> None:
    from graftkit.serve.limits import DecodeBudget

    async def scenario() -> None:
        budget = DecodeBudget(10)
        g = budget.grant()
        await g.acquire(5)
        work = g.track(asyncio.get_running_loop().create_future())
        g.close()
        assert budget.used == 5  # the worker still runs
        work.set_result(None)
        await asyncio.sleep(0)
        assert budget.used == 0
        free = budget.grant()
        await free.acquire(0)  # a text: no pixels, no wait
        assert not free.waiting and budget.used == 0

    _run(scenario())


def _jpeg(size: tuple[int, int], exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (size[1] // 50, size[0] // 50, 3), np.uint8))
    img = small.resize(size, Image.Resampling.BILINEAR)  # smooth: a photo, not noise
    buf = io.BytesIO()
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def test_large_jpegs_decode_at_reduced_scale_small_ones_exactly(tmp_path) -> None:  # noqa: ANN001
    from graftkit.data.images import decode_image as decode
    from graftkit.data.images import load_image, upload_pixels

    big = _jpeg((4000, 3000))
    assert upload_pixels(big, 25_000_000) == 12_000_000
    img = decode(big, 25_000_000, min_side=146)  # 2 x a 73-px resize: 1/8 scale keeps 375
    assert img.size == (500, 375) and img.mode == "RGB"
    img = decode(big, 25_000_000, min_side=512)
    assert img.size == (1000, 750)
    full = decode(big, 25_000_000)
    assert full.size == (4000, 3000)
    # the reduced decode is the full one, downscaled: the same picture
    ref = np.asarray(full.resize((500, 375), Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(decode(big, 25_000_000, 146), np.float32) - ref).mean() < 2
    # under twice the side needed: decoded at full size, pixel for pixel as graft predict
    small = _jpeg((600, 400))
    (tmp_path / "s.jpg").write_bytes(small)
    exact = decode(small, 25_000_000, min_side=201)
    assert exact.size == (600, 400)
    assert np.array_equal(np.asarray(exact), np.asarray(load_image(tmp_path / "s.jpg")))
    # EXIF rotation still applies (in place now), after the reduced decode too
    rotated = _jpeg((800, 400), exif_orientation=6)
    (tmp_path / "r.jpg").write_bytes(rotated)
    assert decode(rotated, 25_000_000).size == (400, 800)
    assert np.array_equal(np.asarray(decode(rotated, 25_000_000)),
                          np.asarray(load_image(tmp_path / "r.jpg")))
    assert decode(rotated, 25_000_000, min_side=100).size == (100, 200)  # 1/4, rotated
    png = _png(Image.new("RGB", (4000, 3000), (1, 2, 3)))  # only JPEGs decode reduced
    assert decode(png, 25_000_000, min_side=100).size == (4000, 3000)


def test_upload_pixels_reads_the_header_only() -> None:
    from graftkit.data.images import BadImage, upload_pixels

    assert upload_pixels(bomb_png(6000, 6000), 36_000_000) == 36_000_000
    for data, code in ((bomb_png(6001, 6000), "too_many_pixels"), (b"", "bad_image"),
                       (b"hello", "unsupported_type"), (b"\x89PNG\r\n\x1a\nxx", "bad_image")):
        with pytest.raises(BadImage) as e:
            upload_pixels(data, 36_000_000)
        assert e.value.code == code
    # what the preprocessing's resize makes of it counts too: a thin strip of a few bytes
    # becomes 256 x 10 million pixels before its centre crop
    assert upload_pixels(bomb_png(640, 480), 36_000_000, 256) == 640 * 480
    assert upload_pixels(bomb_png(500, 4), 36_000_000, 256) == 256 * 256 * 125
    with pytest.raises(BadImage, match="once its short side is resized to 256") as e:
        upload_pixels(bomb_png(40_000, 1), 36_000_000, 256)
    assert e.value.code == "too_many_pixels"


@pytest.mark.parametrize("size", [(5000, 5000), (5000, 37), (37, 5000), (64, 64), (65, 64),
                                  (640, 480), (20, 10), (333, 1000)])
def test_image_stats_match_a_thumbnail_of_a_copy(size: tuple[int, int]) -> None:
    """The drift statistics no longer copy the full image, and give the same numbers."""
    from graftkit.modalities.image import STATS_THUMB, image_stats

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).resize(size)
    small = img.copy()
    small.thumbnail((STATS_THUMB, STATS_THUMB))
    want = float(np.asarray(small.convert("L"), np.float32).mean() / 255)
    assert image_stats(img) == {"brightness": want, "width": size[0], "height": size[1]}


def test_serve_refuses_pixel_limits_below_one_image() -> None:
    from graftkit.serve.cli import _check_limits

    args = (8000, 16, 5.0, 10.0, None, 30.0, 5)
    _check_limits(*args, max_request_pixels=25_000_000, max_decode_pixels=25_000_000)
    for key in ("max_request_pixels", "max_decode_pixels"):
        with pytest.raises(GraftError, match=f"--{key.replace('_', '-')} 1000: use at least "
                           "--max-pixels"):
            _check_limits(*args, **{key: 1000})
