"""recsys: the Python client of the recsys real-time recommendation server.

One :class:`Client` speaks both front doors of a server:

- REST (``http://host:8080``): :meth:`Client.ingest` events,
  :meth:`Client.features` for batches of entities, :meth:`Client.recommend`,
  :meth:`Client.similar_items`, :meth:`Client.similar_users`,
  :meth:`Client.popular`, :meth:`Client.models`, :meth:`Client.stats`,
  :meth:`Client.health` / :meth:`Client.ready`;
- Arrow Flight (``grpc://host:8815``): :meth:`Client.scan` of feature views and
  model tables (endpoints read in parallel), :meth:`Client.training_set`
  (point-in-time joins) and :meth:`Client.backfill` (bulk ingest with a
  progress bar).

Tables come back as pandas DataFrames (``scan`` as a pyarrow Table); the
client converts what it sends to the types the server accepts (pandas 3
strings, categoricals, timestamps of any unit and zone). Every error is a
:class:`RecsysError` subclass carrying the HTTP status, the gRPC code and the
server's field and reason.

    >>> import recsys
    >>> with recsys.Client("http://localhost:8080", token="...") as client:
    ...     client.recommend("u1", k=5)
"""

from .client import Client, TLS
from .errors import (
    Conflict,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RecsysError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from .records import FeatureInfo, FeatureView, IngestResult, ModelInfo, Readiness, Rejection, Stats

__version__ = "0.1.0"

__all__ = [
    "Client", "TLS",
    "RecsysError", "InvalidArgument", "Unauthenticated", "PermissionDenied", "NotFound", "Conflict",
    "FailedPrecondition", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "Unimplemented", "Internal",
    "FieldViolation",
    "IngestResult", "Rejection", "ModelInfo", "Stats", "Readiness", "FeatureView", "FeatureInfo",
]
