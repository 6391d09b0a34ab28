"""The HTTP edge: a cap on request bodies, and a request id on every request and response."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import context_var
from .tracing import request_span

MAX_BODY_BYTES = 1024 * 1024
# After a 413, read and discard up to this much more of the body, for at most DRAIN_SECONDS, so that
# a client that writes its whole body before it reads gets the answer and not a connection reset
# (the kernel resets a connection closed with unread data). A body declared larger is not read at all.
DRAIN_MAX_BYTES = 16 * MAX_BODY_BYTES
DRAIN_SECONDS = 5.0
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def too_large_detail(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


async def discard_body(receive: Receive, more_body: bool = True) -> None:
    """Read what is left of the request body, up to DRAIN_MAX_BYTES and DRAIN_SECONDS, and drop it."""

    async def drain() -> None:
        nonlocal more_body
        drained = 0
        while more_body and drained <= DRAIN_MAX_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            drained += len(message.get("body", b""))
            more_body = message.get("more_body", False)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(drain(), timeout=DRAIN_SECONDS)


class BodySizeLimit:
    """Answers 413 to a body whose Content-Length is too large without passing it on, and stops
    passing on a streamed body as soon as it exceeds the limit, so no request can exhaust memory.
    Either way the rest of the body is read and dropped (up to a bound) before the answer, so the
    client can read it."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # A client waiting for "100 Continue" has sent nothing yet; one declaring more than the
            # drain bound would be cut off anyway.
            if headers.get("expect", "").lower() != "100-continue" and int(declared) <= DRAIN_MAX_BYTES:
                await discard_body(receive)
            response = JSONResponse({"detail": too_large_detail(self.max_bytes)}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    await discard_body(receive, message.get("more_body", False))
                    # FastAPI turns an HTTPException raised while it reads the body into this answer.
                    raise HTTPException(status_code=413, detail=too_large_detail(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


class RequestId:
    """Keeps a well-formed incoming X-Request-ID or makes one, logs with it, and returns it;
    opens the request's trace span when tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = context_var.set(("-", "-", "-", request_id))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            with request_span(scope["method"], scope["path"]):
                await self.app(scope, receive, send_with_id)
        finally:
            context_var.reset(token)
