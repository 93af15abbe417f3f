"""Decoding of the ``grpc-status-details-bin`` trailer (a ``google.rpc.Status``).

pyarrow.flight does not expose the details of a gRPC error, so the client
reads the trailer in a Flight client middleware and decodes the two detail
messages the server sends: ``google.rpc.BadRequest`` (field violations) and
``google.rpc.ErrorInfo`` (a reason such as ``DISK_FULL``). The protobuf wire
format of these few messages is decoded here (about 60 lines) rather than
adding a protobuf dependency to the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .errors import FieldViolation

_BAD_REQUEST = "google.rpc.BadRequest"
_ERROR_INFO = "google.rpc.ErrorInfo"


@dataclass
class RPCStatus:
    """The parts of a google.rpc.Status the client uses."""

    code: int = 0
    message: str = ""
    violations: list[FieldViolation] = field(default_factory=list)
    reason: str | None = None


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yields (field number, wire type, value) of a protobuf message; value is
    an int for varints and bytes for length-delimited fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i)
            yield num, wt, v
        elif wt == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            yield num, wt, buf[i:i + n]
            i += n
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wt}")


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else ""


def _strings(buf: bytes) -> dict[int, str]:
    """The length-delimited fields of a message as text, by field number (the last one wins)."""
    return {num: _text(v) for num, wt, v in _fields(buf) if wt == 2}


def decode_status(buf: bytes) -> RPCStatus:
    """Decodes a serialized google.rpc.Status; raises ValueError on garbage."""
    st = RPCStatus()
    for num, wt, v in _fields(buf):
        if num == 1 and isinstance(v, int):
            st.code = v
        elif num == 2 and isinstance(v, bytes):
            st.message = _text(v)
        elif num == 3 and isinstance(v, bytes):
            any_ = {n: x for n, w, x in _fields(v) if isinstance(x, bytes)}  # Any: 1 type_url, 2 value
            name = _text(any_.get(1, b"")).rsplit("/", 1)[-1]
            value = any_.get(2, b"")
            if name == _BAD_REQUEST:
                for n, _, fv in _fields(value):
                    if n == 1 and isinstance(fv, bytes):  # FieldViolation: 1 field, 2 description, 3 reason
                        parts = _strings(fv)
                        st.violations.append(FieldViolation(parts.get(1, ""), parts.get(2, ""), parts.get(3, "")))
            elif name == _ERROR_INFO:
                st.reason = _strings(value).get(1) or None  # ErrorInfo: 1 reason, 2 domain
    return st
