"""Request limits that must hold before any route code runs: body size, slow bodies, total time.

What protects what:

* **Body size** (413): a ``Content-Length`` over the limit is refused before one byte of the body
  is read; a chunked body is counted as it arrives and cut off at the limit. The limit is
  ``settings.max_upload_bytes`` plus room for the multipart envelope, unless the path is listed with
  its own limit (the 16-file batch route, archive and dataset imports: see ``serving/runtime.py``;
  a new route that takes bigger bodies must be listed there). The per-file limit and the pixel limit
  (decompression bombs) are checked again by the routes and the decoder, which know where one file
  ends.
* **Slow bodies** (408): a client that stops sending in the middle of its body (a phone losing the
  network, or a slowloris) is cut off after ``body_idle_timeout_s`` without a byte, so it cannot
  hold a request, its spooled upload and its memory forever (at most half the request timeout, so a
  stall is reported as such rather than as a 504).
* **Total time** (504): every request is answered within ``settings.request_timeout_s``. The route
  runs in its own task; when time is up the client gets the 504 at once and the task is cancelled.
  Work already running in a thread (a model call) finishes in the background; the model call itself
  is bounded by the same timeout in the micro-batcher, so threads are not lost for long either.
* **Idle connections**: uvicorn's ``timeout_keep_alive`` (``hazardlens serve --timeout-keep-alive``,
  5 s) closes idle keep-alive connections, and ``h11_max_incomplete_event_size`` bounds headers.
  Slow *headers* are outside the app's reach: deploy behind the intranet's reverse proxy
  (nginx ``client_header_timeout``) or cap connections with uvicorn ``--limit-concurrency``.

All refusals use the product's one error shape, ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hazardlens.settings import Settings

log = logging.getLogger("hazardlens.http")

#: Room for multipart boundaries, part headers and the small form fields next to the file(s).
ENVELOPE_BYTES = 1024 * 1024
BODY_IDLE_TIMEOUT_S = 20.0

_background: set[asyncio.Task[None]] = set()


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Request:
    def __init__(self) -> None:
        self.received = 0
        self.body_done = False
        self.started = False  # a response start went out to the client
        self.rejection: tuple[int, str, str] | None = None
        self.timed_out = False


class GuardMiddleware:
    """Pure ASGI (BaseHTTPMiddleware cannot stop a running route), installed innermost so that the
    request-id and metrics middlewares see its answers."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Callable[[], Settings],
        limits: Mapping[str, Callable[[Settings], int]] | None = None,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        self.app = app
        self.settings = settings
        self.limits = dict(limits or {})  # path -> body limit (without the envelope)
        self.body_idle_timeout_s = body_idle_timeout_s

    def body_limit(self, path: str, settings: Settings) -> int:
        special = self.limits.get(path.rstrip("/"))
        return (special(settings) if special is not None else settings.max_upload_bytes) + ENVELOPE_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings()
        limit = self.body_limit(scope.get("path", ""), settings)
        length = _content_length(scope)
        if length is not None and length > limit:
            await send_error(
                send, 413, "too_large", f"request body of {length:,} bytes is over the limit of {limit:,} bytes"
            )
            return
        state = _Request()
        idle = min(self.body_idle_timeout_s, settings.request_timeout_s / 2)  # stalls show as 408, not 504

        async def guarded_receive() -> Message:
            if state.body_done or state.rejection is not None:
                return await receive()  # e.g. a streaming response listening for a disconnect
            try:
                message = await asyncio.wait_for(receive(), idle)
            except TimeoutError:
                state.rejection = (408, "body_timeout", f"no request body data for {idle:g} s; the upload was cut off")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if state.received > limit:
                    state.rejection = (413, "too_large", f"request body is over the limit of {limit:,} bytes")
                    return {"type": "http.disconnect"}
                if not message.get("more_body", False):
                    state.body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            if state.rejection is not None or state.timed_out:
                return  # the route's own answer to a cut-off body (or a late one) is replaced
            if message["type"] == "http.response.start":
                state.started = True
            await send(message)

        task = asyncio.ensure_future(self.app(scope, guarded_receive, guarded_send))
        try:
            done, _ = await asyncio.wait({task}, timeout=settings.request_timeout_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            state.timed_out = True
            task.cancel()
            _background.add(task)
            task.add_done_callback(_forget)
            log.warning("request timed out", extra={"path": scope.get("path"), "limit_s": settings.request_timeout_s})
            if not state.started:
                await send_error(
                    send,
                    504,
                    "timeout",
                    f"the request took longer than {settings.request_timeout_s:g} s and was abandoned",
                )
            return
        error = None if task.cancelled() else task.exception()
        if state.rejection is not None:
            if not state.started:
                await send_error(send, *state.rejection)
            return
        if error is not None:
            raise error


def _forget(task: asyncio.Task[None]) -> None:
    _background.discard(task)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


__all__ = ["BODY_IDLE_TIMEOUT_S", "ENVELOPE_BYTES", "GuardMiddleware", "send_error"]
