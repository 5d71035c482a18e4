"""Exceptions that carry their gRPC status, and the one place they are mapped to a status.

Logic raises these (or lets pydantic raise ValidationError); the server's interceptor turns
them into a status and message at the edge. Anything else becomes INTERNAL, logged with its
traceback and never shown to the client.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from pydantic import ValidationError

log = logging.getLogger(__name__)


class TvizError(Exception):
    """Base class: the message is safe to show to the client."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(TvizError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TvizError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(TvizError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(TvizError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(TvizError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TvizError):
    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(TvizError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class WeightsError(TvizError):
    """A weights directory is missing, incomplete or corrupted (names the file)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def format_validation_error(err: ValidationError) -> str:
    """`field.sub: message; other: message` — names every bad field."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "request"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def to_status(exc: BaseException, log_unexpected: bool = True) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the status and message the client sees."""
    if isinstance(exc, TvizError):
        return exc.code, str(exc)
    if isinstance(exc, ValidationError):
        return grpc.StatusCode.INVALID_ARGUMENT, format_validation_error(exc)
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if log_unexpected:
        log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the server log)"
