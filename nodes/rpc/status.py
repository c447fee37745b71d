"""Model errors <-> gRPC status codes: one table, used by servicers to answer and by clients to
raise the same error again.

A servicer answers a model error with its status code and the error's class name in the
trailing metadata (``mmusim-error``), so the client re-raises exactly that class with the same
message; a status without it (a transport failure, another server) is mapped by code alone.
"""

from __future__ import annotations

import grpc

from nodes import errors

ERROR_KEY = "mmusim-error"  # trailing metadata: the model error's class name

# (error class, status code), most specific first: the first isinstance match wins.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.BadAddress, grpc.StatusCode.INVALID_ARGUMENT),  # an address outside any VMA
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),  # a malformed request
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),  # an unknown mm, notifier, segment, permit
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),  # XPMEM EACCES
    (errors.Released, grpc.StatusCode.FAILED_PRECONDITION),  # use after ->release
    (errors.OutOfMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Interrupted, grpc.StatusCode.ABORTED),
    (errors.Busy, grpc.StatusCode.ABORTED),
    (errors.Unreachable, grpc.StatusCode.UNAVAILABLE),  # a partition further on did not answer
    (errors.ModelError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.KernelBug, grpc.StatusCode.INTERNAL),  # a finding about the modelled kernel
)

# status code -> error class, for a status that carries no class name
_BY_CODE: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.PermissionDenied,  # a caller without a certificate
    grpc.StatusCode.FAILED_PRECONDITION: errors.Released,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.OutOfMemory,
    grpc.StatusCode.ABORTED: errors.Busy,
    grpc.StatusCode.UNAVAILABLE: errors.Unreachable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unreachable,
    grpc.StatusCode.CANCELLED: errors.Unreachable,
}

# the classes a client may re-raise by name: every model error and kernel bug, nothing else
_BY_NAME: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, (errors.ModelError, errors.KernelBug))
}


_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The status code numbered ``value`` (as a stream's answer carries it); UNKNOWN if none is."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code answering ``exc``, or None if it is not a model error or kernel bug
    (then it is a bug in mmusim: INTERNAL, and the server logs it)."""
    for cls, code in _TABLE:
        if isinstance(exc, cls):
            return code
    return None


def error_from(code: grpc.StatusCode, details: str, error_name: str | None, what: str = "") -> Exception:
    """The model error a client raises for a failed call (``what``: the call, to name it in a
    message the server did not write)."""
    cls = _BY_NAME.get(error_name or "")
    if cls is not None:
        return cls(details)
    prefix = f"{what}: " if what else ""
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(f"{prefix}{code.name}: {details}")
    return errors.InternalError(f"{prefix}rpc failed with {code.name}: {details}")
