"""The recsys client: one object for the REST API and Arrow Flight."""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import pandas as pd
import pyarrow as pa
import pyarrow.flight as fl
import requests
from tqdm.auto import tqdm

from . import _convert as C
from . import _flight
from . import errors as E
from .records import FeatureView, IngestResult, ModelInfo, Readiness, Rejection, Stats

__all__ = ["Client", "TLS"]

PathLike = Union[str, "os.PathLike[str]"]
TimeLike = Union[int, _dt.datetime, pd.Timestamp, str]

#: Server defaults (``--ingest.max-batch``, ``--ingest.max-body-bytes``); the client
#: learns lower limits from the server's answers and splits batches to fit.
DEFAULT_MAX_BATCH = 10_000
DEFAULT_MAX_BODY_BYTES = 16 << 20
MAX_IDS_PER_REQUEST = 1_000  # features:get
FLIGHT_PORT = 8815

_ARROW_TYPES = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "timestamp_ms": pa.timestamp("ms", tz="UTC"),
    "list<string>": pa.list_(pa.string()),
}
_ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("score", pa.float64()), ("reason", pa.string())])
_USERS_SCHEMA = pa.schema([("user_id", pa.string()), ("score", pa.float64())])


@dataclass(frozen=True)
class TLS:
    """TLS settings for the REST and Flight connections.

    Attributes:
        ca_cert: PEM file of the CA that signed the server's certificate
            (a private CA, say); ``None`` trusts the system roots.
        client_cert: PEM client certificate, for servers started with
            ``--tls.client-ca`` (mTLS); needs ``client_key``.
        client_key: PEM private key of ``client_cert``.
        verify: ``False`` skips the server certificate check (testing only).
    """

    ca_cert: PathLike | None = None
    client_cert: PathLike | None = None
    client_key: PathLike | None = None
    verify: bool = True

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLS: client_cert and client_key go together")


class Client:
    """A client of one recsys server.

    Args:
        url: The REST address, e.g. ``"http://localhost:8080"`` (``https://``
            with TLS); a bare ``host:port`` gets ``http://`` (``https://`` when
            ``tls`` is set).
        flight_url: The Arrow Flight address, e.g. ``"grpc://localhost:8815"``
            (``grpc+tls://`` with TLS). Default: the REST host on port 8815.
        token: A bearer token of the server's ``--auth.token-file``, sent on
            every REST and Flight call.
        tls: ``None`` (plain, or system roots for ``https://``), the path of a
            CA certificate (PEM), ``True`` (TLS with the system roots), ``False``
            (TLS without verifying the server: testing only), or a :class:`TLS`.
        timeout: Seconds for each REST call and each unary Flight call
            (``GetFlightInfo``, actions). Flight streams (scans, training
            sets, backfills) have no deadline, as on the server.
        retries: How often a call refused for overload (429 with
            ``Retry-After``) is tried again before
            :class:`~recsys.ResourceExhausted` is raised.
        max_batch: Most events per ``POST /v1/events`` (the server's
            ``--ingest.max-batch``; a lower server limit is learnt from its
            answer).
        max_body_bytes: Largest request body (the server's
            ``--ingest.max-body-bytes``).

    The client is safe to share between threads. Use it as a context manager,
    or call :meth:`close`, to release its connections.

    Example:
        >>> import recsys
        >>> client = recsys.Client("http://localhost:8080")
        >>> client.ingest([{"user_id": "u1", "item_id": "i42", "behavior": "cart", "ts": 1767225600000}])
        IngestResult(accepted=1, rejected=0, rejections=[], rejected_by_code={})
    """

    def __init__(self, url: str = "http://localhost:8080", flight_url: str | None = None, *,
                 token: str | None = None, tls: TLS | PathLike | bool | None = None, timeout: float = 30.0,
                 retries: int = 3, max_batch: int = DEFAULT_MAX_BATCH,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if isinstance(tls, bool):
            tls = TLS(verify=tls)
        elif tls is not None and not isinstance(tls, TLS):
            tls = TLS(ca_cert=tls)
        self.tls: TLS | None = tls
        self.url = _with_scheme(url, "https" if tls is not None else "http").rstrip("/")
        parsed = urllib.parse.urlsplit(self.url)
        secure = parsed.scheme == "https"
        if tls is not None and not secure:
            raise ValueError(f"url {url!r}: tls is set but the scheme is http; use https://")
        if flight_url is None:
            host = parsed.hostname or "localhost"
            if ":" in host:
                host = f"[{host}]"
            flight_url = f"{'grpc+tls' if secure else 'grpc'}://{host}:{FLIGHT_PORT}"
        self.flight_url = _with_scheme(flight_url, "grpc+tls" if secure else "grpc")
        self.timeout = timeout
        self.retries = retries
        self.max_batch = max_batch
        self.max_body_bytes = max_body_bytes
        self._token = token
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "recsys-python-client"
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        # Passed on every request: a Session's own verify loses to REQUESTS_CA_BUNDLE.
        self._verify: str | bool = True
        self._cert: tuple[str, str] | None = None
        if tls is not None:
            self._verify = str(tls.ca_cert) if (tls.verify and tls.ca_cert) else tls.verify
            if tls.client_cert is not None:
                self._cert = (str(tls.client_cert), str(tls.client_key))
        self._flight_client: fl.FlightClient | None = None
        self._lock = threading.Lock()
        self._views: dict[str, FeatureView] | None = None

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        """Closes the REST session and the Flight connection (safe to call twice)."""
        self._session.close()
        with self._lock:
            if self._flight_client is not None:
                self._flight_client.close()
                self._flight_client = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r}, flight_url={self.flight_url!r})"

    # -- REST plumbing -------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                 data: bytes | None = None) -> requests.Response:
        url = self.url + path
        headers = {"Content-Type": "application/json"} if data is not None else None
        for attempt in range(self.retries + 1):
            try:
                r = self._session.request(method, url, params=params, json=body, data=data, headers=headers,
                                          timeout=self.timeout, verify=self._verify if self.tls else None,
                                          cert=self._cert)
            except requests.exceptions.SSLError as exc:
                raise E.Unavailable(f"{method} {path}: TLS handshake with {self.url} failed: {exc}") from exc
            except requests.Timeout as exc:
                raise E.DeadlineExceeded(f"{method} {path}: no answer within {self.timeout}s") from exc
            except requests.ConnectionError as exc:
                raise E.Unavailable(f"{method} {path}: cannot reach {self.url}: {exc}") from exc
            if r.status_code == 429 and attempt < self.retries:
                # Retry-After, capped, plus up to half of it again so that
                # clients refused together do not come back together.
                wait = min(_retry_after(r) or 1.0, 10.0)
                time.sleep(wait * (1 + random.random() / 2))
                continue
            if r.status_code >= 400:
                raise _http_error(r, f"{method} {path}")
            return r
        raise AssertionError("unreachable")

    def _get(self, path: str, params: Any = None) -> Any:
        return self._request("GET", path, params=params).json()

    # -- health and admin ----------------------------------------------------

    def health(self) -> bool:
        """``GET /healthz``: True when the server is up (raises :class:`~recsys.Unavailable` when unreachable)."""
        self._request("GET", "/healthz")
        return True

    def ready(self) -> Readiness:
        """``GET /readyz``: whether the store is open, the updater caught up and the disk not full, and why not."""
        try:
            r = self._request("GET", "/readyz")
        except E.Unavailable as exc:
            if exc.status == 503 and isinstance(exc.body, dict):
                return Readiness(False, str(exc.body.get("detail", exc.message)))
            raise
        body = r.json()
        return Readiness(body.get("status") == "ready", str(body.get("detail", "")))

    def stats(self) -> Stats:
        """``GET /v1/stats``: log end and applied offsets, events applied, entities, watermark."""
        return Stats.from_json(self._get("/v1/stats"))

    def wait_caught_up(self, timeout: float = 60.0, interval: float = 0.05) -> Stats:
        """Waits until every accepted event is applied (and so readable); returns the stats.

        Raises :class:`~recsys.DeadlineExceeded` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if st.caught_up:
                return st
            if time.monotonic() > deadline:
                raise E.DeadlineExceeded(f"not caught up after {timeout}s: applied {st.applied_offset} of "
                                         f"{st.log_end_offset}")
            time.sleep(interval)

    def models(self) -> list[ModelInfo]:
        """``GET /v1/models``: version, examples learned and rolling quality of each model."""
        return [ModelInfo.from_json(m) for m in self._get("/v1/models").get("models", [])]

    def feature_views(self) -> list[FeatureView]:
        """``GET /v1/feature-views``: every view with its entity, id column, TTL and features."""
        views = [FeatureView.from_json(v) for v in self._get("/v1/feature-views").get("views", [])]
        self._views = {v.name: v for v in views}
        return views

    def dead_letters(self, limit: int = 100) -> pd.DataFrame:
        """``GET /v1/dead-letters`` (admin scope): late and future events, newest first, one row each
        with ``received_at``, ``code``, ``reason`` and the event's fields."""
        body = self._get("/v1/dead-letters", {"limit": limit})
        rows = []
        for d in body.get("dead_letters", []):
            ev = d.get("event") or {}
            rows.append({"received_at": _ms_of_rfc3339(d.get("received_at")), "code": d.get("code", ""),
                         "reason": d.get("reason", ""), **{k: ev.get(k) or None for k in C.EVENT_STRING_COLUMNS},
                         "ts": int(ev["ts"]) if ev.get("ts") not in (None, "") else None})
        cols = ["received_at", "code", "reason", "event_id", "user_id", "item_id", "category_id", "behavior", "ts"]
        schema = pa.schema([("received_at", C.TS), ("code", pa.string()), ("reason", pa.string()),
                            *[(c, pa.string()) for c in cols[3:8]], ("ts", C.TS)])
        return pa.Table.from_pylist(rows, schema=schema).to_pandas()

    # -- ingest --------------------------------------------------------------

    def ingest(self, events: Iterable[dict[str, Any]] | pd.DataFrame | pa.Table, *,
               ts_unit: C.TsUnit | None = None) -> IngestResult:
        """Sends events over ``POST /v1/events``, in batches that fit the server's limits.

        Args:
            events: A list of dicts, a DataFrame or a pyarrow Table with the
                fields ``user_id``, ``item_id``, ``behavior`` (``view``,
                ``cart``, ``fav``, ``purchase``, or ``pv``/``buy``), ``ts`` and
                optionally ``category_id`` and ``event_id``. ``ts`` is Unix
                milliseconds (an int), a datetime/Timestamp (naive means UTC),
                or an RFC 3339 string. Missing values (None, NaN, NaT) leave a
                field out.
            ts_unit: The unit of integer ``ts`` values when not milliseconds
                (``"s"``, ``"us"``, ``"ns"``).

        Returns:
            The accepted count and every rejected event with its index in
            ``events``, field, code and reason. Invalid events never raise:
            a batch in which every event is invalid is reported the same way.

        Raises:
            Unauthenticated, PermissionDenied: without a token of scope ``write``.
            ResourceExhausted: the server's disk is full (``reason == "DISK_FULL"``)
                or it stayed overloaded.
            InvalidArgument: for request-level problems (a single event over
                the body limit, say).
        """
        rows = C.event_dicts(events, ts_unit)
        parts = [json.dumps(r, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)
                 .encode() for r in rows]
        result = self._send_events(parts)
        result.rejections.sort(key=lambda r: r.index)
        return result

    def _chunk_end(self, parts: list[bytes], start: int) -> int:
        """End of the batch from start that fits max_batch and max_body_bytes (at least one event)."""
        end, size = start, 12  # the body is {"events":[...]}: 12 bytes plus each event and its comma
        while end < len(parts) and end - start < self.max_batch:
            if end > start and size + len(parts[end]) + 1 > self.max_body_bytes:
                break
            size += len(parts[end]) + 1
            end += 1
        return end

    def _send_events(self, parts: list[bytes]) -> IngestResult:
        out = IngestResult()
        start = 0
        while start < len(parts):
            end = self._chunk_end(parts, start)
            out._add(self._ingest_batch(parts[start:end]), start)
            start = end
        return out

    def _halves(self, parts: list[bytes]) -> IngestResult:
        mid = (len(parts) + 1) // 2
        out = self._ingest_batch(parts[:mid])
        out._add(self._ingest_batch(parts[mid:]), mid)
        return out

    def _ingest_batch(self, parts: list[bytes]) -> IngestResult:
        body = b'{"events":[' + b",".join(parts) + b"]}"
        try:
            resp = self._request("POST", "/v1/events", data=body).json()
        except E.InvalidArgument as exc:
            if len(parts) > 1:
                # Over a server limit: nothing was ingested; learn the limit and resend in smaller batches.
                limit = _limit(exc.message, r"^events: batch of \d+ events exceeds the limit of (\d+)")
                if limit is not None and 0 < limit < len(parts):
                    self.max_batch = min(self.max_batch, limit)
                    return self._send_events(parts)
                limit = _limit(exc.message, r"^body: exceeds the limit of (\d+) bytes")
                if limit is not None:
                    self.max_body_bytes = min(self.max_body_bytes, limit)
                    return self._send_events(parts) if self._chunk_end(parts, 0) < len(parts) else self._halves(parts)
            per_event = [v for v in exc.violations if v.field.startswith("events[")]
            if per_event and len(per_event) == len(exc.violations):
                # Every event of the batch was rejected: the server lists them
                # (up to 100) as field violations and accepted nothing.
                rej = [_violation_rejection(v) for v in per_event]
                if len({r.index for r in rej}) == len(parts):
                    return _result(0, rej)
                if len(parts) > 1:
                    return self._halves(parts)  # more than the server lists: ask about halves
            raise
        rej = [Rejection(int(r.get("index", 0)), r.get("field", ""), r.get("code", ""), r.get("reason", ""))
               for r in resp.get("rejected", [])]
        return _result(int(resp.get("accepted", 0)), rej)

    # -- online reads --------------------------------------------------------

    def _view(self, name: str) -> FeatureView | None:
        if self._views is None or name not in self._views:
            try:
                self.feature_views()
            except E.RecsysError:
                return None
        return (self._views or {}).get(name)

    def features(self, view: str, ids: Sequence[str] | str, features: Sequence[str] | None = None,
                 as_of: TimeLike | None = None, *, with_status: bool = False, format: str = "rows") -> pd.DataFrame:
        """Online features of entities (``POST /v1/features:get``), one row per id in the order given.

        Args:
            view: ``"user_features"``, ``"item_features"`` or ``"category_features"``.
            ids: Entity ids (duplicates and unknown ids allowed; more than
                1,000 are sent in several requests). A single string is one id.
            features: A subset of the view's features (default: all).
            as_of: Read windowed features as of this time (Unix ms, datetime,
                Timestamp or ISO 8601 string). Features without history read
                as of the past are null with status ``not_versioned``.
            with_status: Add ``<feature>.status`` (``present``, ``not_found``,
                ``expired``, ``not_versioned``) and ``<feature>.event_time``
                (its last update) after each value column.
            format: The answer the server sends: ``"rows"`` (one object per
                entity and feature; every server) or ``"columns"`` (one array
                per feature, about a fifth of the bytes and much less work on
                both sides; a feature may then be named only once). The
                DataFrame is the same.

        Returns:
            A DataFrame with the view's id column (``user_id``, ...) and one
            column per feature, typed as in a Flight scan of the view
            (int64, float64, timestamp[ms, UTC], string, lists); values that
            are not present are null. ``client.features(v, ids)`` equals
            ``client.scan(v, ids=ids).to_pandas()``.
        """
        if format not in ("rows", "columns"):
            raise ValueError(f"format: {format!r} is not 'rows' or 'columns'")
        if isinstance(ids, str):
            ids = [ids]
        ids = [str(i) for i in ids]
        fv = self._view(view)
        id_col = fv.id_column if fv and fv.id_column else "id"
        base: dict[str, Any] = {"view": view}
        if features is not None:
            base["features"] = list(features)
        if as_of is not None:
            base["as_of"] = _ms(as_of, "as_of")
        if format == "columns":
            base["format"] = "columns"
        got_ids: list[str] = []
        names: list[str] | None = None
        # Per feature (by position: the rows answer repeats a feature named twice):
        # values, statuses, event times in Unix ms.
        values: list[list[Any]] = []
        statuses: list[list[str]] = []
        times: list[list[int | None]] = []
        for i in range(0, len(ids), MAX_IDS_PER_REQUEST):
            resp = self._request("POST", "/v1/features:get", body={**base, "ids": ids[i:i + MAX_IDS_PER_REQUEST]}).json()
            if names is None:
                if format == "columns":
                    names = list(resp["features"])
                elif resp.get("entities"):
                    names = [f["name"] for f in resp["entities"][0].get("features", [])]
                if names is not None:
                    values, statuses, times = ([[] for _ in names] for _ in range(3))
            if format == "columns":
                n, start = len(resp["ids"]), len(got_ids)
                got_ids += resp["ids"]
                col = {name: j for j, name in enumerate(names or [])}
                for j, name in enumerate(names or []):
                    values[j] += resp["columns"][name]
                    times[j] += resp["event_time_ms"][name]
                    statuses[j] += ["present"] * n
                for st in resp["status"]:  # the values not present; without feature: every feature
                    for j in [col[st["feature"]]] if "feature" in st else range(len(col)):
                        statuses[j][start + st["id_index"]] = st["status"]
                continue
            for e in resp.get("entities", []):
                got_ids.append(e.get("id", ""))
                for j, f in enumerate(e.get("features", [])):
                    values[j].append(f.get("value"))
                    statuses[j].append(f.get("status"))
                    times[j].append(_ms_of_rfc3339(f.get("event_time")))
        if names is None:
            if features is not None:
                names = list(features)
            else:
                names = [f.name for f in fv.features] if fv else []
            values, statuses, times = ([[] for _ in names] for _ in range(3))
        arrays: dict[str, pa.Array] = {id_col: pa.array(got_ids, pa.string())}
        for j, name in enumerate(names):
            info = fv.feature(name) if fv else None
            typ = _ARROW_TYPES.get(info.type) if info else None
            arrays[name] = _feature_array(values[j], typ)
            if with_status:
                arrays[f"{name}.status"] = pa.array(statuses[j], pa.string())
                arrays[f"{name}.event_time"] = pa.array(times[j], C.TS)
        return pa.table(arrays).to_pandas()

    def recommend(self, user: str, k: int = 10, *, category: str | None = None,
                  exclude: Sequence[str] | None = None, exclude_seen: bool = False) -> pd.DataFrame:
        """Ranked recommendations for a user (``GET /v1/users/{user}/recommendations``).

        Args:
            user: The user id (unknown users get popular items).
            k: How many (1 to 1,000; the server's default is 10).
            category: Only items of this category.
            exclude: Item ids to leave out.
            exclude_seen: Leave out every item the user touched.

        Returns:
            A DataFrame ``item_id``, ``score``, ``reason`` (e.g. ``"similar to
            123 you carted"``), best first; ``df.attrs["model_version"]`` is the
            ranker version that ordered it.
        """
        params: dict[str, Any] = {"k": k}
        if category is not None:
            params["category"] = category
        if exclude:
            params["exclude"] = [str(x) for x in exclude]
        if exclude_seen:
            params["exclude_seen"] = "true"
        body = self._get(f"/v1/users/{_seg(user)}/recommendations", params)
        df = _frame(body.get("items", []), _ITEMS_SCHEMA)
        df.attrs["model_version"] = body.get("model_version", "")
        return df

    def similar_items(self, item: str, k: int = 10) -> pd.DataFrame:
        """Neighbours of an item by co-occurrence (``GET /v1/items/{item}/similar``):
        ``item_id``, ``score``, ``reason``, best first."""
        return _frame(self._get(f"/v1/items/{_seg(item)}/similar", {"k": k}).get("items", []), _ITEMS_SCHEMA)

    def similar_users(self, user: str, k: int = 10) -> pd.DataFrame:
        """Users who recently touched the same items (``GET /v1/users/{user}/similar``):
        ``user_id``, ``score``, best first."""
        return _frame(self._get(f"/v1/users/{_seg(user)}/similar", {"k": k}).get("users", []), _USERS_SCHEMA)

    def history(self, user: str, limit: int = 50) -> pd.DataFrame:
        """The user's history as the models keep it (``GET /v1/users/{user}/history``): the
        distinct items the user touched, newest first, with ``item_id``, ``category_id``,
        ``behavior`` (the strongest one), ``event_time`` (the newest, UTC) and ``events``.
        An unknown user has an empty history."""
        rows = self._get(f"/v1/users/{_seg(user)}/history", {"limit": limit}).get("items", [])
        return pa.table({
            "item_id": pa.array([r.get("item_id") for r in rows], pa.string()),
            "category_id": pa.array([r.get("category_id") for r in rows], pa.string()),
            "behavior": pa.array([r.get("behavior") for r in rows], pa.string()),
            "event_time": pa.array([_ms_of_rfc3339(r.get("event_time")) for r in rows], C.TS),
            "events": pa.array([None if r.get("events") is None else int(r["events"]) for r in rows], pa.int64()),
        }).to_pandas()

    def popular(self, k: int = 10, *, category: str | None = None, window: str | None = None,
                by: str | None = None, as_of: TimeLike | None = None) -> pd.DataFrame:
        """Popular items (``GET /v1/items/popular``): time-decayed and behavior-weighted, or with
        ``window="1h"`` (whole hours) the top items in that window by ``by`` (``weighted``,
        ``view``, ``cart``, ...) ending at ``as_of``. Columns ``item_id``, ``score``, ``reason``."""
        params: dict[str, Any] = {"k": k}
        for key, v in (("category", category), ("window", window), ("by", by)):
            if v is not None:
                params[key] = v
        if as_of is not None:
            params["as_of"] = _ms(as_of, "as_of")
        return _frame(self._get("/v1/items/popular", params).get("items", []), _ITEMS_SCHEMA)

    # -- Arrow Flight --------------------------------------------------------

    def _tls_pems(self) -> dict[str, Any]:
        t = self.tls
        if t is None:
            return {"ca_pem": None, "cert_pem": None, "key_pem": None, "verify": True}
        return {"ca_pem": Path(t.ca_cert).read_bytes() if t.ca_cert else None,
                "cert_pem": Path(t.client_cert).read_bytes() if t.client_cert else None,
                "key_pem": Path(t.client_key).read_bytes() if t.client_key else None,
                "verify": t.verify}

    def _new_flight(self, uri: str | None = None) -> fl.FlightClient:
        try:
            return _flight.connect(uri or self.flight_url, **self._tls_pems())
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
            if _flight.is_flight_error(exc):
                raise _flight.error(exc, f"connect {uri or self.flight_url}") from exc
            raise

    def _flight(self) -> fl.FlightClient:
        with self._lock:
            if self._flight_client is None:
                self._flight_client = self._new_flight()
            return self._flight_client

    def _options(self, unary: bool = True) -> fl.FlightCallOptions:
        headers = [(b"authorization", f"Bearer {self._token}".encode())] if self._token else []
        return fl.FlightCallOptions(headers=headers, timeout=self.timeout if unary else None)

    def _action(self, name: str, body: dict[str, Any] | None = None) -> Any:
        try:
            results = list(self._flight().do_action(fl.Action(name, json.dumps(body or {}).encode() if body else b""),
                                                    options=self._options()))
        except Exception as exc:  # noqa: BLE001
            if _flight.is_flight_error(exc):
                raise _flight.error(exc, f"DoAction {name}") from exc
            raise
        return json.loads(results[0].body.to_pybytes()) if results else None

    def view_stats(self) -> dict[str, Any]:
        """Flight action ``stats``: rows (and record bytes) per view and model table, and disk bytes."""
        return self._action("stats")

    def list_views(self) -> dict[str, pa.Schema]:
        """Flight ``ListFlights``: every scannable view and model table with its Arrow schema."""
        try:
            flights = list(self._flight().list_flights(options=self._options()))
        except Exception as exc:  # noqa: BLE001
            if _flight.is_flight_error(exc):
                raise _flight.error(exc, "ListFlights") from exc
            raise
        return {_path(f.descriptor): f.schema for f in flights}

    def scan(self, view: str, columns: Sequence[str] | None = None, *, ids: Sequence[str] | None = None,
             as_of: TimeLike | None = None, partitions: int | None = None, max_workers: int = 4) -> pa.Table:
        """Reads a feature view or model table over Arrow Flight.

        ``GetFlightInfo`` plans the read: a full scan of a large view comes as
        several endpoints over disjoint id ranges (one per 250,000 rows, or
        ``partitions``); they are read in parallel, each on a connection of
        its own, and concatenated in id order.

        Args:
            view: A feature view (``user_features``, ``item_features``; the
                ``category_features`` view needs ``ids``), a model table
                (``item_neighbors``, ``user_factors``, ``item_factors``,
                ``ranker_weights``) or ``dead_letters`` (admin scope).
            columns: A subset of the view's features (feature views only).
            ids: Read only these entities, in this order (unknown ids are
                rows of nulls).
            as_of: Read as of this time (Unix ms, datetime or ISO 8601).
            partitions: Ask for this many endpoints (1 to 64).
            max_workers: Endpoints read at once.

        Returns:
            An Arrow table with the server's schema (the id column, then one
            column per feature; times as ``timestamp[ms, UTC]``).
        """
        cmd: dict[str, Any] = {"view": view}
        if columns is not None:
            cmd["columns"] = list(columns)
        if ids is not None:
            cmd["ids"] = [str(i) for i in ([ids] if isinstance(ids, str) else ids)]
        if as_of is not None:
            cmd["as_of"] = _ms(as_of, "as_of")
        if partitions is not None:
            cmd["partitions"] = partitions
        desc = (fl.FlightDescriptor.for_path(view) if len(cmd) == 1
                else fl.FlightDescriptor.for_command(json.dumps(cmd)))
        client = self._flight()
        try:
            info = client.get_flight_info(desc, options=self._options())
        except Exception as exc:  # noqa: BLE001
            if _flight.is_flight_error(exc):
                raise _flight.error(exc, f"GetFlightInfo {view}") from exc
            raise
        endpoints = list(info.endpoints)
        if not endpoints:
            return info.schema.empty_table()

        def read(ep: fl.FlightEndpoint, own: bool) -> pa.Table:
            uri = _endpoint_uri(ep)
            c = self._new_flight(uri) if (own or uri) else client
            try:
                return c.do_get(ep.ticket, options=self._options(unary=False)).read_all()
            except Exception as exc:  # noqa: BLE001
                if _flight.is_flight_error(exc):
                    raise _flight.error(exc, f"DoGet {view}") from exc
                raise
            finally:
                if c is not client:
                    c.close()

        if len(endpoints) == 1:
            parts = [read(endpoints[0], False)]
        else:
            with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(endpoints)))) as pool:
                parts = list(pool.map(lambda ep: read(ep, True), endpoints))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def training_set(self, spine: pd.DataFrame | pa.Table, features: Sequence[str] | None = None, *,
                     views: Sequence[str] | None = None, ts_unit: C.TsUnit | None = None,
                     max_rows_per_exchange: int = 1_000_000, chunk_rows: int = 65_536) -> pd.DataFrame:
        """A point-in-time training set: every spine row joined with the features as of its ``ts``
        (Flight ``DoExchange`` ``point_in_time``), so no feature sees an event after its row.

        Args:
            spine: Rows with ``user_id`` and/or ``item_id``, ``ts`` and any
                label columns. ``ts`` is a timestamp column (any unit or time
                zone; naive means UTC), Unix milliseconds (ints), or ISO 8601
                strings. Integer ``ts`` that look like Unix seconds are refused
                (:class:`~recsys.InvalidArgument`, field ``spine.ts``) unless
                ``ts_unit`` says so. String columns of any Arrow flavour
                (pandas 3 ``str``, ``string[pyarrow]``, categoricals) are fine.
            features: Features to join (default: all of the views').
            views: Views to join (default: ``user_features`` when the spine has
                ``user_id``, ``item_features`` when it has ``item_id``).
            ts_unit: Unit of integer ``ts`` values (default milliseconds).
            max_rows_per_exchange: Larger spines go in several exchanges (the
                server holds a spine in memory: at most 20 M rows, 256 MiB).
            chunk_rows: Rows per record batch sent.

        Returns:
            The spine's columns and index as given, then one column
            ``<entity>.<feature>`` per feature (``user.view_count_1h``, ...).
        """
        table = C.to_table(spine, "spine")
        if views is None:
            views = [v for col, v in (("user_id", "user_features"), ("item_id", "item_features"))
                     if col in table.column_names]
            if not views:
                raise E.InvalidArgument("spine: needs a user_id or item_id column (or name the views)", field="spine")
        id_cols = {"user_features": "user_id", "item_features": "item_id"}
        strings = [id_cols.get(v, v.removesuffix("_features") + "_id") for v in views]
        table = C.normalize(table, strings=strings, ts="ts", ts_field="spine.ts", unit=ts_unit, guard_seconds=True)
        cmd: dict[str, Any] = {"op": "point_in_time", "views": list(views)}
        if features is not None:
            cmd["features"] = list(features)
        outs = []
        for start in range(0, max(table.num_rows, 1), max(1, max_rows_per_exchange)):
            part = table.slice(start, max_rows_per_exchange)
            out = self._exchange(cmd, part, chunk_rows)
            if out.num_rows != part.num_rows:
                raise E.Internal(f"DoExchange: {out.num_rows} rows came back for a spine of {part.num_rows}")
            outs.append(out.select(out.column_names[part.num_columns:]))
        joined = pa.concat_tables(outs) if len(outs) > 1 else outs[0]
        feats = joined.to_pandas()
        base = spine if isinstance(spine, pd.DataFrame) else spine.to_pandas()
        feats.index = base.index
        return pd.concat([base, feats], axis=1)

    def _exchange(self, cmd: dict[str, Any], table: pa.Table, chunk_rows: int) -> pa.Table:
        client = self._flight()
        writer = None
        try:
            writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(cmd)),
                                                options=self._options(unary=False))
            writer.begin(table.schema)
            for batch in C.batches(table, chunk_rows):
                writer.write_batch(batch)
            writer.done_writing()
            out = reader.read_all()
            writer.close()
            writer = None
            return out
        except Exception as exc:  # noqa: BLE001
            if _flight.is_flight_error(exc):
                err = _flight.error(exc, "DoExchange")
                raise err from exc
            raise
        finally:
            if writer is not None:
                _close_quietly(writer)

    def backfill(self, source: PathLike | pd.DataFrame | pa.Table | pa.RecordBatchReader, *,
                 progress: bool = True, batch_rows: int = 65_536, ts_unit: C.TsUnit | None = None) -> IngestResult:
        """Bulk-loads events over Flight ``DoPut`` (path ``["events"]``), with a progress bar in rows.

        The events go through the same validation, watermark, dedup and
        durability as :meth:`ingest` (write scope); backfilling the same
        events again changes nothing.

        Args:
            source: A Parquet file (read batch by batch), a DataFrame, a
                pyarrow Table or a RecordBatchReader with the columns
                ``user_id``, ``item_id``, ``behavior``, ``ts`` and optionally
                ``category_id``, ``event_id`` (other columns are refused by the
                server). Types are converted as for :meth:`training_set`:
                large/view strings, categoricals and integer ids become
                strings, ``ts`` becomes ``timestamp[ms, UTC]``.
            progress: Show a tqdm progress bar (rows sent).
            batch_rows: Rows per record batch sent.
            ts_unit: Unit of integer ``ts`` values (default milliseconds).

        Returns:
            Accepted and rejected counts, rejections by code and the first 100
            rejections with their row index.
        """
        batches_, total = _source_batches(source, batch_rows)
        first = next(batches_, None)
        if first is None:
            return IngestResult()

        def norm(b: pa.RecordBatch) -> pa.Table:
            return C.normalize(pa.Table.from_batches([b]), strings=C.EVENT_STRING_COLUMNS, unit=ts_unit)

        head = norm(first)
        schema = head.schema
        client = self._flight()
        writer = None
        bar = tqdm(total=total, unit="rows", desc="backfill", disable=not progress)
        try:
            writer, meta = client.do_put(fl.FlightDescriptor.for_path("events"), schema,
                                         options=self._options(unary=False))
            for t in _chain([head], (norm(b) for b in batches_)):
                if t.schema != schema:
                    t = t.cast(schema)
                for b in t.to_batches(max_chunksize=batch_rows):
                    writer.write_batch(b)
                    bar.update(b.num_rows)
            writer.done_writing()
            buf = meta.read()
            writer.close()
            writer = None
        except Exception as exc:  # noqa: BLE001
            if _flight.is_flight_error(exc):
                raise _flight.error(exc, "DoPut events") from exc
            raise
        finally:
            bar.close()
            if writer is not None:
                _close_quietly(writer)
        if buf is None:
            raise E.Internal("DoPut: the server sent no result")
        res = json.loads(buf.to_pybytes())
        rej = [Rejection(int(r.get("index", 0)), r.get("field", ""), r.get("code", ""), r.get("reason", ""))
               for r in res.get("rejections", [])]
        return IngestResult(int(res.get("accepted", 0)), int(res.get("rejected", 0)), rej,
                            {k: int(v) for k, v in (res.get("rejected_by_code") or {}).items()})


# -- helpers ---------------------------------------------------------------------

def _with_scheme(url: str, default: str) -> str:
    return url if "://" in url else f"{default}://{url}"


def _seg(id_: str) -> str:
    """An id as one URL path segment (the server reads %2F as part of the id)."""
    return urllib.parse.quote(str(id_), safe="")


def _retry_after(r: requests.Response) -> float | None:
    try:
        return float(r.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _http_error(r: requests.Response, what: str) -> E.RecsysError:
    """The RecsysError of a REST error answer (grpc-gateway body ``{code, message, details}``)."""
    try:
        body = r.json()
    except ValueError:
        body = None
    code: int | None = None
    message = ""
    violations: list[E.FieldViolation] = []
    reason = None
    if isinstance(body, dict):
        code = body.get("code") if isinstance(body.get("code"), int) else None
        message = str(body.get("message") or body.get("detail") or "")
        for d in body.get("details") or []:
            kind = str(d.get("@type", "")).rsplit("/", 1)[-1]
            if kind == "google.rpc.BadRequest":
                for v in d.get("field_violations") or []:
                    violations.append(E.FieldViolation(v.get("field") or "", v.get("description") or "",
                                                       v.get("reason") or ""))
            elif kind == "google.rpc.ErrorInfo":
                reason = d.get("reason") or None
    if not message:
        message = f"{what}: {r.text.strip() or r.reason}"
    if r.status_code == 507 and reason is None:
        reason = "DISK_FULL"  # the REST answer of a full disk carries no ErrorInfo
    cls = E.error_for_code(code, r.status_code)
    return cls(message, status=r.status_code, grpc_code=E.code_name(code, r.status_code), violations=violations,
               reason=reason, retry_after=_retry_after(r), body=body)


def _limit(message: str, pattern: str) -> int | None:
    m = re.match(pattern, message)
    return int(m.group(1)) if m else None


_EVENT_FIELD = re.compile(r"^events\[(\d+)\](?:\.(.+))?$")


def _violation_rejection(v: E.FieldViolation) -> Rejection:
    m = _EVENT_FIELD.match(v.field)
    index, field = (int(m.group(1)), m.group(2) or "event") if m else (0, v.field)
    return Rejection(index, field, v.reason, v.description)


def _result(accepted: int, rejections: list[Rejection]) -> IngestResult:
    by_code: dict[str, int] = {}
    for r in rejections:
        by_code[r.code] = by_code.get(r.code, 0) + 1
    return IngestResult(accepted, len(rejections), rejections, by_code)


def _json_default(v: Any) -> Any:
    raise TypeError(f"events: {type(v).__name__} value {v!r} cannot be sent as JSON")


def _ms(v: TimeLike, field: str) -> int:
    """Unix milliseconds of an int (ms), datetime (naive = UTC), Timestamp or ISO 8601 string."""
    if isinstance(v, bool):
        raise E.InvalidArgument(f"{field}: {v!r} is not a time", field=field)
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            v = _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise E.InvalidArgument(f"{field}: {v!r} is not an ISO 8601 time", field=field) from None
    out = C.json_value("ts", v, None)
    if not isinstance(out, int):
        raise E.InvalidArgument(f"{field}: {v!r} is not a time", field=field)
    return out


def _ms_of_rfc3339(v: Any) -> int | None:
    if not v:
        return None
    return C._exact_ms(_dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")))


def _feature_array(values: list[Any], typ: pa.DataType | None) -> pa.Array:
    if typ is None:
        return pa.array(values)
    if pa.types.is_floating(typ):
        values = [None if v is None else float(v) for v in values]  # NaN/Infinity come as strings
    elif pa.types.is_integer(typ):
        values = [None if v is None else int(v) for v in values]
    return pa.array(values, typ)


def _frame(rows: list[dict[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table({f.name: _feature_array(cols[f.name], f.type) for f in schema}).to_pandas()


def _path(d: fl.FlightDescriptor) -> str:
    p = d.path[0] if d.path else d.command
    return p.decode() if isinstance(p, bytes) else str(p)


def _endpoint_uri(ep: fl.FlightEndpoint) -> str | None:
    for loc in ep.locations:
        uri = loc.uri.decode() if isinstance(loc.uri, bytes) else str(loc.uri)
        if uri and not uri.startswith("arrow-flight-reuse-connection:"):
            return uri
    return None


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - the call's own error is what is reported
        pass


def _chain(*its: Iterable[pa.Table]) -> Iterator[pa.Table]:
    for it in its:
        yield from it


def _source_batches(source: Any, rows: int) -> tuple[Iterator[pa.RecordBatch], int | None]:
    if isinstance(source, (str, os.PathLike)):
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(source)
        return iter(pf.iter_batches(batch_size=rows)), pf.metadata.num_rows
    if isinstance(source, pa.RecordBatchReader):
        return iter(source), None
    table = C.to_table(source, "backfill")
    return iter(table.to_batches(max_chunksize=rows)), table.num_rows
