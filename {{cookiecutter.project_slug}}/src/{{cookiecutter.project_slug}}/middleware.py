"""The HTTP edge: a cap on request bodies, and a request id on every request and response."""

from __future__ import annotations

import re
import uuid

from fastapi import HTTPException
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id_var
from .tracing import request_span

MAX_BODY_BYTES = 1024 * 1024
REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def too_large_detail(limit: int) -> str:
    return f"request body exceeds {limit} bytes"


class BodySizeLimit:
    """Answers 413 before reading a body whose Content-Length is too large, and stops reading
    a streamed body as soon as it passes the limit, so no request can exhaust memory."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
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
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            with request_span(scope["method"], scope["path"]):
                await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
