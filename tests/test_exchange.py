"""DoExchange point-in-time joins: a spine in, features as of each row out."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import exchange

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    from conftest import Server
    work = tmp_path_factory.mktemp("pit")
    s = Server(work, ["--backup.dir", str(work / "backups")], name="pit")
    s.start()
    # u1 views i1 every 10 minutes for 3 hours; u2 buys i1 once at +95 min.
    evs = [{"user_id": "u1", "item_id": "i1", "category_id": "c1", "behavior": "view", "ts": BASE + k * 10 * MIN}
           for k in range(18)]
    evs.append({"user_id": "u2", "item_id": "i1", "category_id": "c1", "behavior": "purchase", "ts": BASE + 95 * MIN})
    assert s.ingest(evs)["accepted"] == len(evs)
    s.wait_caught_up()
    yield s, evs
    s.close()


def brute_views_1h(evs, user, asof):
    lo = (asof - 60 * MIN + 1) // (5 * MIN) * (5 * MIN)
    return sum(1 for e in evs if e["user_id"] == user and e["behavior"] == "view" and lo <= e["ts"] <= asof)


def test_point_in_time_join_is_leak_free(loaded):
    s, evs = loaded
    times = [BASE - MIN, BASE + 5 * MIN, BASE + 60 * MIN, BASE + 60 * MIN - 1, BASE + 95 * MIN - 1, BASE + 95 * MIN, BASE + 170 * MIN]
    spine = pa.table({
        "user_id": ["u1"] * len(times) + ["u2", "u2"],
        "item_id": ["i1"] * (len(times) + 2),
        "ts": pa.array(times + [BASE + 95 * MIN - 1, BASE + 95 * MIN], type=pa.timestamp("ms", tz="UTC")),
        "label": list(range(len(times) + 2)),
    })
    out = exchange(s, {"op": "point_in_time", "views": ["user_features", "item_features"],
                       "features": ["view_count_1h", "purchase_count_24h", "view_count"]}, spine)
    assert out.column_names == ["user_id", "item_id", "ts", "label", "user.view_count_1h", "user.purchase_count_24h",
                                "user.view_count", "item.view_count_1h", "item.purchase_count_24h", "item.view_count"]
    assert out.column("label").to_pylist() == list(range(len(times) + 2)), "spine rows must pass through in order"
    got = out.column("user.view_count_1h").to_pylist()
    want = [brute_views_1h(evs, "u1", t) for t in times] + [0, 0]
    assert got == want
    # The purchase at +95 min is not visible 1 ms before it, and is at it.
    assert out.column("item.purchase_count_24h").to_pylist()[-2:] == [0, 1]
    assert out.column("user.purchase_count_24h").to_pylist()[-2:] == [0, 1]
    # A lifetime count has no history: null before the entity's last event,
    # the value at or after it.
    life = out.column("user.view_count").to_pylist()
    assert life[:len(times) - 1] == [None] * (len(times) - 1) and life[len(times) - 1] == 18


def test_point_in_time_int_ts_and_errors(loaded):
    s, _ = loaded
    spine = pa.table({"user_id": ["u1"], "ts": pa.array([BASE + 30 * MIN], type=pa.int64())})
    out = exchange(s, {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h"]}, spine)
    assert out.column("user.view_count_1h").to_pylist() == [4]
    for cmd, table, fragment in [
        ({"op": "nope", "views": ["user_features"]}, spine, "op"),
        ({"op": "point_in_time", "views": ["user_features"], "features": ["zzz"]}, spine, "features"),
        ({"op": "point_in_time", "views": ["item_features"]}, spine, "item_id"),
        ({"op": "point_in_time", "views": ["user_features"]}, pa.table({"user_id": ["u1"]}), "ts"),
    ]:
        with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
            exchange(s, cmd, table)
        assert fragment in str(exc.value), exc.value


def test_flight_actions_health_stats_backup(loaded, tmp_path, server_factory):
    s, evs = loaded
    client = fl.connect(s.flight_uri)
    try:
        assert {a.type for a in client.list_actions()} == {"health", "stats", "backup"}
        health = json.loads(next(iter(client.do_action(fl.Action("health", b"")))).body.to_pybytes())
        assert health["status"] == "ok" and health["applied_offset"] == health["log_end_offset"] == len(evs)
        stats = json.loads(next(iter(client.do_action(fl.Action("stats", b"")))).body.to_pybytes())
        assert stats["views"]["user_features"]["rows"] == 2 and stats["views"]["item_features"]["rows"] == 1
        assert stats["disk_bytes"] > 0
        backup = s.workdir / "backups" / "backup"
        res = json.loads(next(iter(client.do_action(fl.Action("backup", json.dumps({"dir": str(backup)}).encode())))).body.to_pybytes())
        assert res["dir"] == str(backup)
        with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:  # the dir exists now
            list(client.do_action(fl.Action("backup", json.dumps({"dir": str(backup)}).encode())))
        assert "exists" in str(exc.value)
        with pytest.raises((fl.FlightError, pa.ArrowException)):
            list(client.do_action(fl.Action("nope", b"")))
    finally:
        client.close()
    # A server on the backup has the same state.
    restored = server_factory(start=False)
    restored.data_dir.parent.mkdir(parents=True, exist_ok=True)
    backup.rename(restored.data_dir)
    restored.start()
    st = restored.wait_caught_up()
    assert st["events_applied"] == len(evs) and st["users"] == 2 and st["items"] == 1


def test_doput_backfill_from_parquet(server_factory, tmp_path):
    import pyarrow.parquet as pq
    s = server_factory("--ingest.allowed-lateness", "1h")
    n = 2000
    table = pa.table({
        "user_id": [f"bu{i % 50}" for i in range(n)] + ["", "bu1"],
        "item_id": [f"bi{i % 70}" for i in range(n)] + ["bi1", "bi1"],
        "category_id": ["c1"] * (n + 2),
        "behavior": ["view", "cart", "fav", "pv"] * (n // 4) + ["view", "click"],
        "ts": pa.array([BASE + i * 1000 for i in range(n)] + [BASE, BASE], type=pa.timestamp("ms")),
    })
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    client = fl.connect(s.flight_uri)
    try:
        writer, meta = client.do_put(fl.FlightDescriptor.for_path("events"), back.schema)
        writer.write_table(back, max_chunksize=700)
        writer.done_writing()
        result = json.loads(meta.read().to_pybytes())
        writer.close()
    finally:
        client.close()
    assert result["accepted"] == n and result["rejected"] == 2, result
    assert {(r["index"], r["field"], r["code"]) for r in result["rejections"]} == {(n, "user_id", "missing"), (n + 1, "behavior", "unknown_behavior")}
    st = s.wait_caught_up()
    assert st["events_applied"] == n
    # The same backfill again is deduplicated.
    client = fl.connect(s.flight_uri)
    try:
        writer, meta = client.do_put(fl.FlightDescriptor.for_path("events"), back.schema)
        writer.write_table(back)
        writer.done_writing()
        json.loads(meta.read().to_pybytes())
        writer.close()
    finally:
        client.close()
    st = s.wait_caught_up()
    assert st["events_applied"] == n and st["duplicates_skipped"] == n
    counts = s.post("/v1/features:get", json={"view": "user_features", "ids": ["bu0"], "features": ["view_count", "cart_count"]}).json()
    vals = {f["name"]: f["value"] for f in counts["entities"][0]["features"]}
    assert vals == {"view_count": sum(1 for i in range(n) if i % 50 == 0 and i % 4 in (0, 3)),
                    "cart_count": sum(1 for i in range(n) if i % 50 == 0 and i % 4 == 1)}


# -- column types of pandas 3 and pyarrow >= 22 ---------------------------------------
# pandas 3 keeps strings as pyarrow large_string ("str"; "string[pyarrow]" in pandas 2),
# categoricals become dictionaries, datetimes come in s, ms, us or ns, naive or with a zone.

def do_put_table(s, table, chunk=None):
    client = fl.connect(s.flight_uri)
    try:
        writer, meta = client.do_put(fl.FlightDescriptor.for_path("events"), table.schema)
        writer.write_table(table, max_chunksize=chunk)
        writer.done_writing()
        buf = meta.read()
        writer.close()  # raises the server's error, if any
        return json.loads(buf.to_pybytes())
    finally:
        client.close()


def ts_array(ms: list[int], unit: str, tz: str | None):
    """Arrow timestamps of the instants ms (Unix milliseconds) in unit, naive or in zone tz."""
    scale = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[unit]
    return pa.array([int(v * scale) for v in ms], type=pa.int64()).cast(pa.timestamp(unit, tz=tz))


STRING_TYPES = {"large_string": pa.large_string(), "string_view": pa.string_view(),
                "large_binary": pa.large_binary(), "binary": pa.binary(), "binary_view": pa.binary_view()}


@pytest.mark.parametrize("unit,tz", [("s", None), ("ms", "UTC"), ("us", None), ("us", "Europe/Berlin"), ("ns", "UTC"), ("ns", None)])
@pytest.mark.parametrize("strings", sorted(STRING_TYPES))
def test_doput_accepts_string_likes_and_timestamp_units(server_factory, strings, unit, tz):
    s = server_factory()
    n = 12
    times = [BASE + k * MIN + (0 if unit == "s" else 7) for k in range(n)]  # whole seconds for unit s
    str_type = STRING_TYPES[strings]
    col = lambda values: pa.array(values, type=pa.string()).cast(str_type)  # noqa: E731
    table = pa.table({
        "user_id": col([f"tu{k % 3}" for k in range(n)]),
        "item_id": col([f"ti{k % 4}" for k in range(n)]),
        "category_id": col(["c1"] * n),
        "behavior": pa.array(["view", "cart", "view", "purchase"] * (n // 4)).dictionary_encode(),
        "ts": ts_array(times, unit, tz),
        "event_id": col([f"te{k}" for k in range(n)]),
    })
    res = do_put_table(s, table, chunk=5)
    assert res["accepted"] == n and res["rejected"] == 0, res
    s.wait_caught_up()
    r = s.post("/v1/features:get", json={"view": "user_features", "ids": ["tu0", "tu1", "tu2"],
                                         "features": ["first_event_ts", "last_event_ts", "view_count"]})
    assert r.status_code == 200, r.text
    got = {e["id"]: {f["name"]: f["value"] for f in e["features"]} for e in r.json()["entities"]}
    for u in range(3):
        mine = [times[k] for k in range(n) if k % 3 == u]
        assert got[f"tu{u}"]["first_event_ts"] == min(mine) and got[f"tu{u}"]["last_event_ts"] == max(mine), (u, got)
    assert sum(got[f"tu{u}"]["view_count"] for u in range(3)) == n // 2


def test_doput_from_a_pandas_frame(server_factory):
    pd = pytest.importorskip("pandas")
    s = server_factory()
    df = pd.DataFrame({
        "user_id": pd.array(["pu1", "pu2", "pu1"], dtype="string[pyarrow]"),  # pandas 3's default "str"
        "item_id": pd.array(["pi1", "pi1", "pi2"], dtype="string[pyarrow]"),
        "behavior": pd.Categorical(["view", "cart", "purchase"]),
        "ts": pd.to_datetime([BASE, BASE + 1000, BASE + 2000], unit="ms", utc=True).as_unit("us"),
    })
    table = pa.Table.from_pandas(df, preserve_index=False)
    assert table.schema.field("user_id").type == pa.large_string()
    res = do_put_table(s, table)
    assert res["accepted"] == 3 and res["rejected"] == 0, res
    s.wait_caught_up()
    body = s.get("/v1/users/pu1/features", params={"features": ["first_event_ts", "purchase_count"]}).json()
    assert {f["name"]: f["value"] for f in body["features"]} == {"first_event_ts": BASE, "purchase_count": 1}


def test_doput_refuses_other_types_naming_the_column(server_factory):
    s = server_factory()
    table = pa.table({"user_id": pa.array([1, 2], pa.int64()), "item_id": ["i", "i"], "behavior": ["view", "view"],
                      "ts": pa.array([BASE, BASE], pa.int64())})
    with pytest.raises(pa.ArrowInvalid) as exc:
        do_put_table(s, table)
    assert "schema.user_id" in str(exc.value) and "int64" in str(exc.value), exc.value


@pytest.mark.parametrize("unit,tz", [("s", None), ("us", None), ("us", "UTC"), ("ns", "America/New_York"), ("ns", None)])
@pytest.mark.parametrize("strings", ["large_string", "string_view", "large_binary"])
def test_point_in_time_accepts_string_likes_and_timestamp_units(loaded, strings, unit, tz):
    s, evs = loaded
    times = [BASE + 30 * MIN, BASE + 60 * MIN, BASE + 95 * MIN, BASE + 170 * MIN]  # whole seconds
    want = exchange(s, {"op": "point_in_time", "views": ["user_features", "item_features"],
                        "features": ["view_count_1h", "purchase_count_24h"]},
                    pa.table({"user_id": ["u1", "u1", "u2", "u1"], "item_id": ["i1"] * 4,
                              "ts": pa.array(times, pa.timestamp("ms", tz="UTC"))}))
    str_type = STRING_TYPES[strings]
    spine = pa.table({"user_id": pa.array(["u1", "u1", "u2", "u1"]).cast(str_type),
                      "item_id": pa.array(["i1"] * 4).cast(str_type),
                      "ts": ts_array(times, unit, tz), "label": [1, 0, 1, 0]})
    out = exchange(s, {"op": "point_in_time", "views": ["user_features", "item_features"],
                       "features": ["view_count_1h", "purchase_count_24h"]}, spine)
    assert out.schema.field("user_id").type == str_type and out.schema.field("ts").type == spine.schema.field("ts").type
    assert out.column("label").to_pylist() == [1, 0, 1, 0]
    for name in ("user.view_count_1h", "user.purchase_count_24h", "item.view_count_1h", "item.purchase_count_24h"):
        assert out.column(name).to_pylist() == want.column(name).to_pylist(), name
    assert want.column("user.view_count_1h").to_pylist() == [brute_views_1h(evs, "u1", times[0]), brute_views_1h(evs, "u1", times[1]), 0,
                                                           brute_views_1h(evs, "u1", times[3])]


@pytest.mark.parametrize("values,fragment", [
    ([BASE // 1000, BASE // 1000 + 60], "Unix seconds"),       # seconds where milliseconds belong
    ([BASE * 1000, BASE * 1000 + 1], "microseconds"),          # microseconds
    ([BASE * 1_000_000], "microseconds"),                       # nanoseconds
])
def test_point_in_time_int_ts_in_another_unit_is_refused(loaded, values, fragment):
    s, _ = loaded
    spine = pa.table({"user_id": ["u1"] * len(values), "ts": pa.array(values, pa.int64())})
    with pytest.raises(pa.ArrowInvalid) as exc:
        exchange(s, {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h"]}, spine)
    msg = str(exc.value)
    assert "invalid argument" in msg and "spine.ts" in msg and "row 0" in msg and fragment in msg, msg


# -- what pandas and pyarrow produce by default, sent as is (no client normalizing) ----------
# `make test-client-latest` runs this file with the newest pandas and pyarrow too.

def large_and_dictionary(values: list[str | None]) -> dict[str, pa.Array]:
    """values as large_string and as dictionaries of int8/int32/int64 indices over string and large_string."""
    plain = pa.array(values, pa.large_string())
    return {"large_string": plain,
            "dict<int8,string>": pa.array(values).dictionary_encode().cast(pa.dictionary(pa.int8(), pa.string())),
            "dict<int32,large_string>": plain.dictionary_encode(),
            "dict<int64,large_string>": plain.dictionary_encode().cast(pa.dictionary(pa.int64(), pa.large_string()))}


@pytest.mark.parametrize("kind", list(large_and_dictionary(["x"])))
def test_point_in_time_large_string_and_dictionary_spines(loaded, kind):
    s, evs = loaded
    times = [BASE + 30 * MIN, BASE + 60 * MIN, BASE + 95 * MIN, BASE + 170 * MIN]
    cmd = {"op": "point_in_time", "views": ["user_features", "item_features"], "features": ["view_count_1h", "purchase_count_24h"]}
    want = exchange(s, cmd, pa.table({"user_id": ["u1", "u1", "u2", "u1"], "item_id": ["i1"] * 4,
                                      "ts": pa.array(times, pa.timestamp("ms"))}))
    spine = pa.table({"user_id": large_and_dictionary(["u1", "u1", "u2", "u1"])[kind],
                      "item_id": large_and_dictionary(["i1"] * 4)[kind],
                      "ts": pa.array(times, pa.timestamp("ms")),
                      "note": large_and_dictionary(["a", "b", "c", "d"])[kind]})
    out = exchange(s, cmd, spine)
    assert out.schema.field("user_id").type == spine.schema.field("user_id").type
    assert out.column("note").to_pylist() == ["a", "b", "c", "d"]
    for name in ("user.view_count_1h", "user.purchase_count_24h", "item.view_count_1h", "item.purchase_count_24h"):
        assert out.column(name).to_pylist() == want.column(name).to_pylist(), name
    # A null id is refused naming the column and the row, whatever the type.
    bad = spine.set_column(0, "user_id", large_and_dictionary(["u1", None, "u2", "u1"])[kind])
    assert bad.schema.field("user_id").type == spine.schema.field("user_id").type and bad.column("user_id").null_count == 1
    with pytest.raises(pa.ArrowInvalid) as exc:
        exchange(s, cmd, bad)
    assert "spine.user_id: row 1 is null" in str(exc.value), exc.value


def test_pandas_defaults_spine_and_parquet_backfill(server_factory, tmp_path):
    """A frame with pandas' default dtypes (str: large_string in pandas 3, object in 2;
    categoricals), to Parquet and back with pyarrow, DoPut as read; then a spine
    made from it the same way."""
    pd = pytest.importorskip("pandas")
    import pyarrow.parquet as pq
    s = server_factory()
    n = 400
    df = pd.DataFrame({
        "user_id": [f"pu{i % 7}" for i in range(n)],
        "item_id": pd.Categorical([f"pi{i % 5}" for i in range(n)]),
        "behavior": ["view", "cart", "view", "purchase"] * (n // 4),
        "category_id": [f"pc{i % 3}" for i in range(n)],
        "ts": pd.to_datetime([BASE + i * 1000 for i in range(n)], unit="ms"),
    })
    path = tmp_path / "events.parquet"
    df.to_parquet(path, index=False)
    for table in (pq.read_table(path),  # large_string under pandas 3 and pyarrow >= 22, dictionary for the categorical
                  pq.read_table(path, read_dictionary=["user_id", "behavior", "category_id"])):
        assert pa.types.is_dictionary(table.schema.field("item_id").type)
        if int(pd.__version__.split(".")[0]) >= 3 and not pa.types.is_dictionary(table.schema.field("user_id").type):
            assert table.schema.field("user_id").type == pa.large_string(), table.schema  # pandas 3's str
        res = do_put_table(s, table, chunk=128)
        assert res["accepted"] == n and res["rejected"] == 0, res
    st = s.wait_caught_up()
    assert st["events_applied"] == n and st["duplicates_skipped"] == n  # the second file is the same events
    spine = pa.Table.from_pandas(pd.DataFrame({"user_id": ["pu0", "pu1"], "item_id": pd.Categorical(["pi0", "pi1"]),
                                               "ts": pd.to_datetime([BASE + n * 1000] * 2, unit="ms")}), preserve_index=False)
    out = exchange(s, {"op": "point_in_time", "views": ["user_features", "item_features"], "features": ["view_count_7d"]}, spine)
    views = lambda col, v: sum(1 for i in range(n) if df[col][i] == v and i % 4 in (0, 2))  # noqa: E731
    assert out.column("user.view_count_7d").to_pylist() == [views("user_id", "pu0"), views("user_id", "pu1")]
    assert out.column("item.view_count_7d").to_pylist() == [views("item_id", "pi0"), views("item_id", "pi1")]


def test_point_in_time_join_of_a_million_rows_matches_pandas(server_factory):
    """A 1 M-row spine over 2,000 users (many rows per user, in no order, times over 3 days and
    beyond both ends) equals the brute-force as-of counts computed with pandas from the raw events,
    for windows read from 5-minute tiles (1 h) and from 1-hour tiles (24 h, 7 d)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    users, n_events, n_rows = 2_000, 60_000, 1_000_000
    span = 3 * 24 * 60 * MIN
    ev = pd.DataFrame({"user": rng.integers(0, users, n_events), "ts": BASE + np.sort(rng.integers(0, span, n_events)),
                       "behavior": np.where(rng.random(n_events) < 0.2, "cart", "view")})
    s = server_factory()
    events = [{"user_id": f"u{u}", "item_id": f"i{k % 97}", "category_id": "c1", "behavior": b, "ts": int(t)}
              for k, (u, t, b) in enumerate(zip(ev.user, ev.ts, ev.behavior))]
    for i in range(0, len(events), 10_000):
        assert s.ingest(events[i:i + 10_000])["accepted"] == len(events[i:i + 10_000])
    s.wait_caught_up()
    spine_user = rng.integers(0, users + 10, n_rows)  # 10 users without events
    spine_ts = BASE + rng.integers(-2 * 60 * MIN, span + 2 * 60 * MIN, n_rows)
    spine = pa.table({"user_id": pa.array([f"u{u}" for u in spine_user]), "ts": pa.array(spine_ts, pa.int64()),
                      "label": pa.array(np.arange(n_rows))})
    feats = {"view_count_1h": ("view", 60 * MIN, 5 * MIN), "view_count_24h": ("view", 24 * 60 * MIN, 60 * MIN),
             "cart_count_7d": ("cart", 7 * 24 * 60 * MIN, 60 * MIN)}
    out = exchange(s, {"op": "point_in_time", "views": ["user_features"], "features": list(feats)}, spine)
    assert out.column("label").to_numpy().tolist() == list(range(n_rows)), "spine rows must pass through in order"
    for name, (behavior, window, tile) in feats.items():
        # Events of the user and behavior in [floor(asof - window + 1, tile), asof].
        want = np.zeros(n_rows, dtype=np.int64)
        times = {u: g.ts.to_numpy() for u, g in ev[ev.behavior == behavior].groupby("user")}
        lo = (spine_ts - window + 1) // tile * tile
        for u in np.unique(spine_user):
            rows = np.nonzero(spine_user == u)[0]
            t = times.get(u, np.array([], dtype=np.int64))
            want[rows] = np.searchsorted(t, spine_ts[rows], side="right") - np.searchsorted(t, lo[rows], side="left")
        assert want.sum() > n_rows // 20, f"{name}: the spine counts too little"
        got = out.column("user." + name).to_numpy(zero_copy_only=False)
        known = spine_user < users
        known_with_events = known & np.isin(spine_user, ev.user.unique())
        assert pd.isna(got[~known_with_events]).all(), name
        bad = np.nonzero(got[known_with_events].astype(np.int64) != want[known_with_events])[0]
        assert len(bad) == 0, f"{name}: {len(bad)} rows differ, first {bad[:5]}"
