"""Flight plumbing: connections with TLS and token, and pyarrow's exceptions as
:class:`recsys.RecsysError`.

pyarrow raises ``ArrowInvalid``, ``ArrowKeyError`` or ``FlightError``
subclasses whose text embeds the server's message and gRPC code; the
server's ``google.rpc.Status`` details (field violations) travel in the
``grpc-status-details-bin`` trailer, which a client middleware records for
the failing call.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl

from . import errors as E
from ._rpcstatus import decode_status

_DETAILS_HEADER = "grpc-status-details-bin"
_local = threading.local()


class _DetailsMiddleware(fl.ClientMiddleware):
    def __init__(self) -> None:
        self.details: bytes | None = None

    def received_headers(self, headers: dict[str, list[Any]]) -> None:
        for v in headers.get(_DETAILS_HEADER, ()):
            self.details = v if isinstance(v, bytes) else str(v).encode("latin-1")

    def call_completed(self, exception: BaseException | None) -> None:
        if exception is not None and self.details:
            # pyarrow raises a new exception object with the same text; the
            # handler on this thread matches the details to it by that text.
            _local.last = (str(exception), self.details)


class _DetailsFactory(fl.ClientMiddlewareFactory):
    def start_call(self, info: Any) -> fl.ClientMiddleware:
        return _DetailsMiddleware()


def connect(uri: str, *, ca_pem: bytes | None, cert_pem: bytes | None, key_pem: bytes | None,
            verify: bool) -> fl.FlightClient:
    kw: dict[str, Any] = {"middleware": [_DetailsFactory()]}
    if ca_pem is not None:
        kw["tls_root_certs"] = ca_pem
    if cert_pem is not None:
        kw["cert_chain"] = cert_pem
        kw["private_key"] = key_pem
    if not verify:
        kw["disable_server_verification"] = True
    return fl.connect(uri, **kw)


_MESSAGE = re.compile(r"returned [a-z ]+ error, with message: (.*?)(?:\. gRPC client debug context:|\. Client context:|$)", re.S)
_GRPC_STATUS = re.compile(r"grpc_status:(\d+)")
_BY_PHRASE = {
    "invalid argument": "INVALID_ARGUMENT", "not found": "NOT_FOUND", "unauthenticated": "UNAUTHENTICATED",
    "unauthorized": "PERMISSION_DENIED", "permission denied": "PERMISSION_DENIED",
    "precondition failed": "FAILED_PRECONDITION", "resource exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE", "timeout": "DEADLINE_EXCEEDED", "deadline exceeded": "DEADLINE_EXCEEDED",
    "cancelled": "CANCELLED", "unimplemented": "UNIMPLEMENTED", "not implemented": "UNIMPLEMENTED",
    "already exists": "ALREADY_EXISTS", "aborted": "ABORTED", "internal": "INTERNAL", "unknown": "UNKNOWN",
}
_PHRASE = re.compile(r"returned ([a-z ]+) error, with message")


def _code_of(exc: BaseException, text: str) -> str:
    m = _GRPC_STATUS.search(text)
    if m:
        return E.code_name(int(m.group(1)))
    m = _PHRASE.search(text)
    if m and m.group(1) in _BY_PHRASE:
        return _BY_PHRASE[m.group(1)]
    if isinstance(exc, fl.FlightUnauthenticatedError):
        return "UNAUTHENTICATED"
    if isinstance(exc, fl.FlightUnauthorizedError):
        return "PERMISSION_DENIED"
    if isinstance(exc, fl.FlightUnavailableError):
        return "UNAVAILABLE"
    if isinstance(exc, fl.FlightTimedOutError):
        return "DEADLINE_EXCEEDED"
    if isinstance(exc, fl.FlightCancelledError):
        return "CANCELLED"
    if isinstance(exc, pa.ArrowKeyError):
        return "NOT_FOUND"
    if isinstance(exc, pa.ArrowNotImplementedError):
        return "UNIMPLEMENTED"
    if isinstance(exc, pa.ArrowInvalid):
        return "INVALID_ARGUMENT"
    return "INTERNAL"


def error(exc: BaseException, what: str = "") -> E.RecsysError:
    """The RecsysError of a pyarrow/Flight exception (the server's code, message and field violations)."""
    text = str(exc)
    code = _code_of(exc, text)
    m = _MESSAGE.search(text)
    message = m.group(1).strip() if m else text.strip()
    violations: list[E.FieldViolation] = []
    reason = None
    details = None
    last = getattr(_local, "last", None)
    if last is not None and last[0] == text:
        details = last[1]
        _local.last = None
    if details:
        try:
            st = decode_status(details)
        except ValueError:
            st = None
        if st is not None:
            if st.code:
                code = E.code_name(st.code)
            message = st.message or message
            violations = st.violations
            reason = st.reason
    if code == "UNAVAILABLE" and what and what not in message:
        message = f"{what}: {message}"
    cls = E.error_for_code(code)
    return cls(message, grpc_code=code, violations=violations, reason=reason)


def is_flight_error(exc: BaseException) -> bool:
    return isinstance(exc, (fl.FlightError, pa.ArrowException))
