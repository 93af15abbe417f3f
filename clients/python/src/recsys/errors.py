"""The errors of the recsys client: one hierarchy for REST and Arrow Flight.

Every error the server sends becomes a :class:`RecsysError` subclass chosen by
its gRPC status code (REST bodies carry it as ``code``; Flight errors as the
gRPC status), with the HTTP status where there is one and the server's field
violations (``google.rpc.BadRequest``) parsed into :attr:`RecsysError.field`,
:attr:`RecsysError.reason` and :attr:`RecsysError.violations`.

Errors the client finds itself before sending anything (say a spine whose
``ts`` looks like Unix seconds) are raised as the same classes with
``status=None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldViolation",
    "RecsysError",
    "InvalidArgument",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "FailedPrecondition",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "Unimplemented",
    "Internal",
    "error_for_code",
]


@dataclass(frozen=True)
class FieldViolation:
    """One ``google.rpc.BadRequest`` field violation.

    Attributes:
        field: The request path of the offending field, e.g. ``"features"``,
            ``"events[3].ts"``, ``"spine.ts"``.
        description: The server's explanation, e.g.
            ``'features: unknown feature "zz" in view user_features'``.
        reason: The stable machine-readable code where the server gives one
            (ingest validation: ``"missing"``, ``"late"``, ``"too_old"``,
            ``"unknown_behavior"``, ...), else ``""``.
    """

    field: str
    description: str
    reason: str = ""


class RecsysError(Exception):
    """Base class of every error raised by :class:`recsys.Client`.

    Attributes:
        message: The server's message (or the client's, for local checks).
        status: The HTTP status of a REST answer; ``None`` for Flight calls,
            connection failures and checks made by the client.
        grpc_code: The gRPC status code name (``"INVALID_ARGUMENT"``, ...).
        field: The offending request field: the first field violation's, or
            the ``field:`` prefix of the message; ``None`` when unknown.
        reason: The machine-readable reason of the first violation
            (``"missing"``, ``"late"``, ...) or of a ``google.rpc.ErrorInfo``
            (``"DISK_FULL"``); ``None`` when the server gives none.
        violations: Every field violation the server sent.
        retry_after: Seconds from a ``Retry-After`` header, if any.
        body: The decoded REST error body, if any.
    """

    grpc_code_default = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        grpc_code: str | None = None,
        field: str | None = None,
        reason: str | None = None,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        self.message = message
        self.status = status
        self.grpc_code = grpc_code or self.grpc_code_default
        self.violations = list(violations or [])
        first = self.violations[0] if self.violations else None
        self.field = field if field is not None else (first.field if first else _field_of(message))
        self.reason = reason if reason is not None else (first.reason or None if first else None)
        self.retry_after = retry_after
        self.body = body
        super().__init__(message)

    @property
    def description(self) -> str | None:
        """The first violation's description, if any."""
        return self.violations[0].description if self.violations else None

    def __str__(self) -> str:
        where = f"HTTP {self.status}, {self.grpc_code}" if self.status is not None else self.grpc_code
        extra = ""
        if self.field and self.field not in self.message:
            extra += f" [field {self.field}]"
        if self.reason and self.reason not in self.message:
            extra += f" [reason {self.reason}]"
        return f"{self.message} ({where}){extra}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, status={self.status!r}, field={self.field!r}, "
                f"reason={self.reason!r})")


class InvalidArgument(RecsysError):
    """The request is malformed or names an unknown field, feature, view or column
    (``INVALID_ARGUMENT``; HTTP 400, or 415 for a wrong content type)."""

    grpc_code_default = "INVALID_ARGUMENT"


class Unauthenticated(RecsysError):
    """No token, or a token the server does not know (``UNAUTHENTICATED``, HTTP 401)."""

    grpc_code_default = "UNAUTHENTICATED"


class PermissionDenied(RecsysError):
    """The token lacks the scope of the call, e.g. a ``read`` token that ingests
    (``PERMISSION_DENIED``, HTTP 403)."""

    grpc_code_default = "PERMISSION_DENIED"


class NotFound(RecsysError):
    """An unknown view or route (``NOT_FOUND``, HTTP 404)."""

    grpc_code_default = "NOT_FOUND"


class Conflict(RecsysError):
    """An ordered-ingest batch out of sequence (``ABORTED``, HTTP 409)."""

    grpc_code_default = "ABORTED"


class FailedPrecondition(RecsysError):
    """The server is not set up for the call, e.g. a backup without ``--backup.dir``
    (``FAILED_PRECONDITION``)."""

    grpc_code_default = "FAILED_PRECONDITION"


class ResourceExhausted(RecsysError):
    """Overload (HTTP 429, see :attr:`retry_after`), a full disk (HTTP 507, reason
    ``DISK_FULL``) or a request over a size limit (``RESOURCE_EXHAUSTED``)."""

    grpc_code_default = "RESOURCE_EXHAUSTED"


class Unavailable(RecsysError):
    """The server cannot be reached, is shutting down or its storage failed
    (``UNAVAILABLE``, HTTP 503)."""

    grpc_code_default = "UNAVAILABLE"


class DeadlineExceeded(RecsysError):
    """The call did not finish within its timeout (``DEADLINE_EXCEEDED``, HTTP 504)."""

    grpc_code_default = "DEADLINE_EXCEEDED"


class Unimplemented(RecsysError):
    """The server does not offer the call (``UNIMPLEMENTED``, HTTP 501)."""

    grpc_code_default = "UNIMPLEMENTED"


class Internal(RecsysError):
    """A server-side failure (``INTERNAL``/``UNKNOWN``/``DATA_LOSS``, HTTP 500)."""

    grpc_code_default = "INTERNAL"


# gRPC status codes (google.rpc.Code) by number.
GRPC_CODES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
    11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

_BY_CODE: dict[str, type[RecsysError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
    "NOT_FOUND": NotFound,
    "ABORTED": Conflict,
    "ALREADY_EXISTS": Conflict,
    "FAILED_PRECONDITION": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "UNIMPLEMENTED": Unimplemented,
    "INTERNAL": Internal,
    "UNKNOWN": Internal,
    "DATA_LOSS": Internal,
    "CANCELLED": RecsysError,
}

_BY_HTTP: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 412: "FAILED_PRECONDITION", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED", 507: "RESOURCE_EXHAUSTED",
}


def error_for_code(code: str | int | None, http_status: int | None = None) -> type[RecsysError]:
    """The error class of a gRPC status code (name or number), else of an HTTP status."""
    if isinstance(code, int):
        code = GRPC_CODES.get(code)
    if not code and http_status is not None:
        code = _BY_HTTP.get(http_status, "INTERNAL" if http_status >= 500 else "INVALID_ARGUMENT")
    return _BY_CODE.get(code or "UNKNOWN", RecsysError)


def code_name(code: str | int | None, http_status: int | None = None) -> str:
    """The gRPC code name of code, else the one an HTTP status stands for."""
    if isinstance(code, int):
        code = GRPC_CODES.get(code)
    if not code and http_status is not None:
        code = _BY_HTTP.get(http_status, "INTERNAL" if http_status >= 500 else "INVALID_ARGUMENT")
    return code or "UNKNOWN"


# A message that starts with a request path and a colon names its field:
# "features: unknown feature ...", "events[0].ts: ...", "spine.ts: ...".
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*): ")


def _field_of(message: str) -> str | None:
    m = _FIELD_PREFIX.match(message or "")
    return m.group(1) if m else None
