"""gRPC status at the CSI edge: ``CsiError`` carries a code, ``rpc`` maps cargohold's
exception tree onto the codes the CSI spec names for each failure.

Called by identity.py, controller.py and node.py: every servicer method is wrapped in
``@rpc``, so a handler raises and never touches the gRPC context itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import grpc

from cargohold.control.client import OperationFailed, WaitTimeout
from cargohold.errors import (
    AlreadyExists,
    Busy,
    CargoholdError,
    InvalidArgument,
    ManagerUnavailable,
    NotFound,
    Unschedulable,
    WrongState,
)

log = logging.getLogger("cargohold.csi")

S = TypeVar("S")  # the servicer
Q = TypeVar("Q")  # the request message
R = TypeVar("R")  # the response message

Code = grpc.StatusCode


class CsiError(Exception):
    """Answer the RPC with this gRPC status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> CsiError:
    return CsiError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> CsiError:
    return CsiError(Code.NOT_FOUND, message)


def code_for(e: CargoholdError) -> grpc.StatusCode:
    """The gRPC code for an error of the manager client (or of the node's tools)."""
    if isinstance(e, NotFound):
        return Code.NOT_FOUND
    if isinstance(e, AlreadyExists):
        return Code.ALREADY_EXISTS
    if isinstance(e, Busy):
        return Code.ABORTED
    if isinstance(e, WrongState):
        return Code.FAILED_PRECONDITION
    if isinstance(e, InvalidArgument):
        return Code.INVALID_ARGUMENT
    if isinstance(e, Unschedulable):
        return Code.RESOURCE_EXHAUSTED
    if isinstance(e, ManagerUnavailable):
        return Code.UNAVAILABLE
    if isinstance(e, WaitTimeout):
        return Code.DEADLINE_EXCEEDED
    if isinstance(e, OperationFailed):
        return Code.INTERNAL
    return Code.INTERNAL


def rpc(
    fn: Callable[[S, Q, grpc.ServicerContext], R],
) -> Callable[[S, Q, grpc.ServicerContext], R]:
    """Wrap a servicer method: CsiError and CargoholdError become gRPC statuses; anything
    else is a bug, logged with its traceback and answered INTERNAL."""

    @functools.wraps(fn)
    def wrapper(self: S, request: Q, context: grpc.ServicerContext) -> R:
        name = fn.__name__
        try:
            return fn(self, request, context)
        except CsiError as e:
            log.info("%s: %s: %s", name, e.code.name, e.message)
            context.abort(e.code, e.message)
        except CargoholdError as e:
            code = code_for(e)
            log.info("%s: %s: %s", name, code.name, e)
            context.abort(code, str(e))
        except Exception as e:
            log.exception("%s failed", name)
            context.abort(Code.INTERNAL, f"{name}: {type(e).__name__}: {e}")

    return wrapper
