"""Keys, roles, size/pixel/media limits and timeouts, all answered in the one error shape."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from hazardlens.settings import Settings
from tests.fixtures.core import auth
from tests.fixtures.serving import photo, register

MAX_BYTES = 200_000
MAX_PIXELS = 50_000
TIMEOUT_S = 1.0  # only where a test wants a timeout; others keep a generous one for loaded machines


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", max_upload_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, request_timeout_s=30.0)


@pytest.fixture
def limited(ctx, serving_app, model_variants, tracked) -> Iterator[tuple[TestClient, Any]]:  # type: ignore[no-untyped-def]
    loader, engines, knobs = tracked
    register(ctx, model_variants[0], "1")
    with TestClient(serving_app(loader=loader)) as client:
        client.app.state.models.refresh()  # load now, outside any request timeout
        yield client, engines


def _error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


def _detect(client: TestClient, key: str | None, data: bytes, name: str = "a.jpg") -> Any:
    return client.post("/v1/detect", files={"file": (name, data, "image/jpeg")}, headers=auth(key) if key else {})


def test_keys_and_roles(limited, make_key) -> None:
    client, _ = limited
    _error(_detect(client, None, photo()), 401, "missing_key")
    _error(_detect(client, "hl_nope_nope", photo()), 401, "invalid_key")
    _error(client.get("/v1/models", headers={"Authorization": "Basic abc"}), 401)
    _error(client.get("/metrics"), 401)
    assert client.get("/healthz").status_code == 200  # the one endpoint without a key
    inspector = make_key("420000", "inspector")
    _error(
        client.post("/v1/models/hazardlens/1/promote", json={"stage": "production"}, headers=auth(inspector)),
        403,
        "forbidden",
    )
    _error(client.post("/v1/models/hazardlens/rollback", headers=auth(make_key("420000", "service"))), 403)


def test_size_pixel_and_media_limits(limited, make_key) -> None:
    client, _ = limited
    key = make_key("420000", "service")
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert MAX_BYTES < len(buf.getvalue()) < MAX_BYTES + 1_000_000
    _error(_detect(client, key, buf.getvalue(), "big.png"), 413, "file_too_large")
    # Small in bytes, large in pixels (a decompression bomb in miniature).
    big = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 200, 200)).save(big, format="JPEG")
    assert len(big.getvalue()) < MAX_BYTES and MAX_PIXELS < 400 * 300
    _error(_detect(client, key, big.getvalue()), 413, "too_large")
    _error(_detect(client, key, b"%PDF-1.7 not a photo"), 415, "unsupported_media_type")
    _error(_detect(client, key, b""), 415)
    _error(_detect(client, key, photo()[:200]), 415)  # a JPEG cut short by a dropped connection
    _error(client.post("/v1/detect", headers=auth(key)), 422, "invalid")  # no file at all
    _error(
        client.post(
            "/v1/detect", files={"file": ("a.jpg", photo(), "image/jpeg")}, data={"conf": "abc"}, headers=auth(key)
        ),
        422,
        "invalid",
    )


def test_oversized_bodies_are_refused_early(limited, make_key) -> None:
    client, _ = limited
    key = make_key("420000", "service")
    body = b"x" * (MAX_BYTES + 1_100_000)
    err = _error(
        client.post("/v1/detect", content=body, headers={**auth(key), "Content-Type": "image/jpeg"}), 413, "too_large"
    )
    assert "limit" in err["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"y" * 65536

    multipart = {**auth(key), "Content-Type": "multipart/form-data; boundary=b"}
    _error(client.post("/v1/detect", content=chunks(), headers=multipart), 413, "too_large")
    # The batch route takes up to 16 uploads, so its body may be larger.
    files = [("files", (f"{i}.jpg", photo(seed=i), "image/jpeg")) for i in range(3)]
    assert client.post("/v1/detect/batch", files=files, headers=auth(key)).status_code == 200


def test_slow_inference_times_out_with_504(limited, make_key, ctx) -> None:
    client, engines = limited
    key = make_key("420000", "service")
    ctx.settings = ctx.settings.with_(request_timeout_s=TIMEOUT_S)  # read per request
    engines["1"][0].delay = 3.0
    start = time.monotonic()
    err = _error(_detect(client, key, photo()), 504, "timeout")
    assert time.monotonic() - start < TIMEOUT_S + 1.5, "answered when the time was up, not when the work ended (3 s)"
    assert "1 s" in err["message"]
    engines["1"][0].delay = 0.0
    time.sleep(TIMEOUT_S * 2.5)  # the abandoned call drains; the worker keeps serving
    assert _detect(client, key, photo()).status_code == 200


def _raw(port: int, head: bytes, body: bytes = b"", wait: float = 10.0) -> tuple[bytes, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data, time.monotonic() - start


def test_stalled_upload_and_huge_content_length_on_a_real_server(
    ctx, serving_app, model_variants, live_server, make_key
) -> None:
    register(ctx, model_variants[0], "1")
    key = make_key("420000", "service")
    timeout = 4.0  # the stall cut-off is half of it; room for a loaded machine to start reading the body
    ctx.settings = ctx.settings.with_(request_timeout_s=timeout)
    with live_server(serving_app()) as server:
        head = (
            f"POST /v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\n"
        ).encode()
        # Refused from the header alone: the body is never sent.
        data, took = _raw(server.port, head + b"Content-Length: 999999999\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 413") and took < 2
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_large"
        # A client that stops sending half-way is cut off (408), well before the request timeout.
        data, took = _raw(server.port, head + b"Content-Length: 100000\r\n\r\n", b"--b\r\nContent-Disposition: ")
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
        assert timeout / 2 - 0.1 <= took < timeout, took
        assert b"x-request-id" in data.lower()
