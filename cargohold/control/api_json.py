"""What the manager API takes in: JSON bodies (``application/json`` only, else 415; bounded
by ``max_request_bytes``, else 413; strict: NaN, Infinity and numbers too large for a
float are refused with 422) and the types of its parameters (``Name``).
"""

from __future__ import annotations

import email.message
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from cargohold.control.auth import authorize_first
from cargohold.control.model import NAME_PATTERN
from cargohold.errors import PayloadTooLarge, UnsupportedMediaType

Name = Annotated[str, Path(pattern=NAME_PATTERN, min_length=1, max_length=63)]

JSON = dict[str, Any]


def _is_json(content_type: str) -> bool:
    m = email.message.Message()
    m["content-type"] = content_type
    sub = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:40]} is out of range")
    return v


def parse_json(body: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (which Python's json takes and which could never be
    written back), no number that overflows a float."""
    return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, read only up to ``limit`` bytes (a Content-Length above it is refused
    before anything is read); PayloadTooLarge past it."""
    too_big = PayloadTooLarge(f"the body is larger than {limit} bytes (max_request_bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    request._body = body = b"".join(chunks)  # Request.body() returns it from now on
    return body


class JSONRoute(APIRoute):
    """A route whose body (when it takes one) must be ``application/json`` (else 415) and
    strict JSON (else 422); the parsed body is handed on to FastAPI, which uses it as is.
    Before any of that, the caller is authenticated and authorized (``auth.authorize_first``):
    401 and 403 come before 413, 415 and 422."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            await authorize_first(self, request)
            body = await _bounded_body(request, request.app.state.max_request_bytes)
            if body:
                kind = request.headers.get("content-type", "")
                if not _is_json(kind):
                    raise UnsupportedMediaType(
                        f"the body must be JSON (Content-Type: application/json), not {kind[:80]!r}"
                        if kind
                        else "the body has no Content-Type: send it as application/json"
                    )
                try:
                    request._json = parse_json(body)  # Request.json() returns it from now on
                except (ValueError, RecursionError) as e:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body",),
                                "msg": f"the body is not valid JSON: {str(e)[:200]}",
                                "input": {},
                            }
                        ]
                    ) from None
            return await handler(request)

        return checked
