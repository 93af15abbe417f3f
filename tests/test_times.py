"""Every int64 time a client can send, through the real binary and the real
clients: point-in-time spines (int64 and timestamps of every unit), as_of of
features:get (REST and gRPC), popular items and Flight tickets, and DoPut
backfill times. Each answers at once with values or nulls, or with
INVALID_ARGUMENT naming the field and the reason; the server's memory stays
small. (A spine row at day 2^32-1, like -5 before it, once made the server
loop without end, its memory growing until it was killed.)"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server, exchange

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
MIN64, MAX64 = -(2**63), 2**63 - 1
LAST_TILE_DAY = (2**32 - 1) * DAY + 5  # in day 2^32-1, the last a tile key can name
YEAR_9999 = 253_402_300_799_999
FAST = 5.0  # seconds: every answer, error or not


def rss_peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("times"), name="times")
    s.start()
    evs = [{"user_id": "u1", "item_id": "i1", "category_id": "c1", "behavior": "view", "ts": BASE},
           {"user_id": "u1", "item_id": "i2", "category_id": "c1", "behavior": "purchase", "ts": BASE + 1}]
    assert s.ingest(evs)["accepted"] == 2
    s.wait_caught_up()
    yield s
    # Nothing above took more than a little memory, and the server is well.
    assert rss_peak_bytes(s.proc.pid) < 1 << 30, rss_peak_bytes(s.proc.pid)
    assert s.get("/healthz").status_code == 200
    s.close()


CMD = {"op": "point_in_time", "views": ["user_features", "item_features"],
       "features": ["view_count_1h", "view_count", "purchase_count_7d"]}

# (type, ts, fragment of the error or None for an answer)
SPINE_TIMES = [
    (pa.int64(), MIN64, "before 1970"),
    (pa.int64(), -5, "before 1970"),
    (pa.int64(), 0, "Unix seconds?"),
    (pa.int64(), 1, "Unix seconds?"),
    (pa.int64(), BASE + 1, None),
    (pa.int64(), YEAR_9999, None),
    (pa.int64(), LAST_TILE_DAY, "microseconds or nanoseconds?"),
    (pa.int64(), MAX64, "microseconds or nanoseconds?"),
    (pa.timestamp("ms"), MIN64, "before 1970"),
    (pa.timestamp("ms"), -5, "before 1970"),
    (pa.timestamp("ms"), 0, None),
    (pa.timestamp("ms"), 1, None),
    (pa.timestamp("ms", tz="UTC"), LAST_TILE_DAY, None),
    (pa.timestamp("ms"), 2**32 * DAY, None),
    (pa.timestamp("ms"), MAX64, None),
    (pa.timestamp("s"), MAX64, "out of range"),
    (pa.timestamp("s"), LAST_TILE_DAY // 1000, None),
    (pa.timestamp("us"), MIN64, "before 1970"),
    (pa.timestamp("us"), MAX64, None),
    (pa.timestamp("ns", tz="Europe/Paris"), MAX64, None),
]


@pytest.mark.parametrize("typ,ts,fragment", SPINE_TIMES, ids=[f"{t}-{v}" for t, v, _ in SPINE_TIMES])
def test_spine_ts_answers_at_once(srv, typ, ts, fragment):
    spine = pa.table({"user_id": ["u1", "u1"], "item_id": ["i1", "i1"], "ts": pa.array([ts, ts], typ), "label": [7, 8]})
    start = time.monotonic()
    if fragment is not None:
        with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
            exchange(srv, CMD, spine)
        assert time.monotonic() - start < FAST
        msg = str(exc.value)
        assert "invalid argument" in msg.lower() and "spine.ts: row 0" in msg and fragment in msg, msg
        return
    out = exchange(srv, CMD, spine)
    assert time.monotonic() - start < FAST
    assert out.num_rows == 2 and out.column("label").to_pylist() == [7, 8]
    # The spine's ts comes back as sent (compared as integers: pyarrow
    # cannot make datetimes of most of these).
    assert out.column("ts").cast(pa.int64()).to_pylist() == [ts, ts]
    ms = ts * {"s": 1000, "ms": 1, "us": 1e-3, "ns": 1e-6}[typ.unit] if pa.types.is_timestamp(typ) else ts
    for entity in ("user", "item"):
        # Nothing in the windows (null in 1970: past the views' TTL); the
        # lifetime count where the entity's history is complete, null
        # (not versioned) before its last event.
        window = out.column(f"{entity}.view_count_1h").to_pylist()
        assert window == ([None, None] if ms < BASE else [1, 1] if ms < BASE + 3_600_000 else [0, 0]), (entity, window)
        life = out.column(f"{entity}.view_count").to_pylist()
        assert life == ([1, 1] if ms >= BASE + 1 else [None, None]), (entity, life)


def test_spine_mixing_extreme_and_normal_rows(srv):
    # One spine, rows of every valid kind: each row as of its own time.
    times = [0, 1, BASE - 1, BASE, BASE + 1, YEAR_9999, LAST_TILE_DAY, MAX64]
    spine = pa.table({"user_id": ["u1"] * len(times), "ts": pa.array(times, pa.timestamp("ms"))})
    start = time.monotonic()
    out = exchange(srv, {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h", "purchase_count_7d"]}, spine)
    assert time.monotonic() - start < FAST
    assert out.column("user.view_count_1h").to_pylist() == [None, None, 0, 1, 1, 0, 0, 0]
    assert out.column("user.purchase_count_7d").to_pylist() == [None, None, 0, 0, 1, 0, 0, 0]


# (as_of, fragment of the error or None)
AS_OF = [(MIN64, "is negative"), (-5, "is negative"), (0, None), (1, "Unix seconds?"), (BASE // 1000, "Unix seconds?"),
         (BASE + 1, None), (YEAR_9999, None), (LAST_TILE_DAY, "microseconds or nanoseconds?"),
         (MAX64, "microseconds or nanoseconds?")]


@pytest.mark.parametrize("as_of,fragment", AS_OF, ids=[str(a) for a, _ in AS_OF])
def test_rest_as_of_answers_at_once(srv, as_of, fragment):
    for path, kw in [("/v1/features:get", {"json": {"view": "user_features", "ids": ["u1"], "as_of": str(as_of)}}),
                     ("/v1/features:get", {"json": {"view": "item_features", "ids": ["i1"], "as_of": str(as_of)}}),
                     ("/v1/features:get", {"json": {"view": "category_features", "ids": ["c1"], "as_of": str(as_of)}}),
                     ("/v1/items/popular", {"params": {"window": "168h", "as_of": as_of}})]:
        start = time.monotonic()
        r = (srv.post if path.endswith(":get") else srv.get)(path, timeout=FAST, **kw)
        assert time.monotonic() - start < FAST
        if fragment is None:
            assert r.status_code == 200, r.text
            continue
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["code"] == 3 and body["message"].startswith("as_of: ") and fragment in body["message"], body
    if fragment is None and as_of >= BASE + 1:
        r = srv.post("/v1/features:get", json={"view": "user_features", "ids": ["u1"], "as_of": str(as_of),
                                               "features": ["view_count", "purchase_count_7d"]})
        got = {f["name"]: f["value"] for f in r.json()["entities"][0]["features"]}
        assert got == {"view_count": 1, "purchase_count_7d": 1 if as_of == BASE + 1 else 0}, got


@pytest.mark.parametrize("as_of,fragment", AS_OF, ids=[str(a) for a, _ in AS_OF])
def test_grpc_as_of_answers_at_once(srv, as_of, fragment, request):
    grpc = pytest.importorskip("grpc")  # not in the environment of the newest pandas and pyarrow
    pb = request.getfixturevalue("pb")
    feats = pb.g.FeatureServiceStub(srv.channel())
    recs = pb.g.RecommendServiceStub(srv.channel())
    for call in (lambda: feats.GetFeatures(pb.m.GetFeaturesRequest(view="user_features", ids=["u1"], as_of=as_of), timeout=FAST),
                 lambda: recs.PopularItems(pb.m.PopularItemsRequest(window="24h", as_of=as_of), timeout=FAST)):
        if fragment is None:
            call()
            continue
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value
        assert exc.value.details().startswith("as_of: ") and fragment in exc.value.details(), exc.value.details()
        assert [f for f, _ in pb.field_violations(exc.value)] == ["as_of"]


@pytest.mark.parametrize("as_of,fragment", AS_OF, ids=[str(a) for a, _ in AS_OF])
def test_flight_ticket_as_of_answers_at_once(srv, as_of, fragment):
    client = fl.connect(srv.flight_uri)
    try:
        query = {"view": "user_features", "columns": ["view_count_1h", "view_count"], "as_of": as_of}
        start = time.monotonic()
        if fragment is None:
            info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps(query)))
            table = pa.concat_tables([client.do_get(e.ticket).read_all() for e in info.endpoints])
            assert table.column("user_id").to_pylist() == ["u1"]
            assert table.column("view_count").to_pylist() == [1]
        else:
            with pytest.raises((fl.FlightError, pa.ArrowInvalid)) as exc:
                client.do_get(fl.Ticket(json.dumps(query).encode())).read_all()
            assert "as_of: " in str(exc.value) and fragment in str(exc.value), exc.value
        assert time.monotonic() - start < FAST
    finally:
        client.close()


DOPUT_TIMES = [(pa.int64(), MIN64, "too_old"), (pa.int64(), -5, "too_old"), (pa.int64(), 1, "too_old"),
               (pa.timestamp("ms"), MAX64, "future"), (pa.timestamp("ms"), LAST_TILE_DAY, "future"),
               (pa.timestamp("us"), MIN64, "too_old"), (pa.timestamp("ns"), MAX64, "future")]


@pytest.mark.parametrize("typ,ts,code", DOPUT_TIMES, ids=[f"{t}-{v}" for t, v, _ in DOPUT_TIMES])
def test_doput_ts_answers_at_once(srv, typ, ts, code):
    per_ms = {"ms": 1, "us": 1000, "ns": 1_000_000}[typ.unit] if pa.types.is_timestamp(typ) else 1
    table = pa.table({"user_id": ["p1", "p1"], "item_id": ["i1", "i1"], "behavior": ["view", "view"],
                      "ts": pa.array([ts, (BASE + 10) * per_ms], typ)})
    client = fl.connect(srv.flight_uri)
    try:
        start = time.monotonic()
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("events"), table.schema)
        writer.write_table(table)
        writer.done_writing()
        res = json.loads(reader.read().to_pybytes())
        writer.close()
        assert time.monotonic() - start < FAST
    finally:
        client.close()
    # The row with the extreme time is rejected, named by its index; the
    # other is ingested.
    assert res["rejected"] == 1 and res["rejected_by_code"] == {code: 1}, res
    assert res["rejections"][0]["index"] == 0 and res["rejections"][0]["field"] == "ts", res
    assert res["accepted"] + res["rejected"] == 2


def test_compressed_spine_past_the_budget_is_refused_before_it_is_taken(srv):
    # One row whose label decompresses to 384 MiB: past the spine's 256 MiB,
    # refused before the memory is allocated (a few KB on the wire).
    blob = pa.array([b"\0" * (384 << 20)], pa.large_binary())
    spine = pa.table({"user_id": ["u1"], "ts": pa.array([BASE], pa.int64()), "blob": blob})
    before = rss_peak_bytes(srv.proc.pid)
    client = fl.connect(srv.flight_uri)
    start = time.monotonic()
    try:
        opts = pa.ipc.IpcWriteOptions(compression="zstd")
        cmd = {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h"]}
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(cmd)))
        with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
            writer.begin(spine.schema, options=opts)
            writer.write_table(spine)
            writer.done_writing()
            reader.read_all()
        assert "spine: a batch needs more than 256 MiB" in str(exc.value), exc.value
    finally:
        client.close()
    del blob, spine
    assert time.monotonic() - start < FAST
    assert rss_peak_bytes(srv.proc.pid) - before < 128 << 20, (before, rss_peak_bytes(srv.proc.pid))
