"""Bulk Arrow Flight reads and writes end to end: partitioned full scans read
in parallel, DoGet by id against REST, point-in-time joins (DoExchange)
against a brute-force pandas computation from the Taobao CSV, DoPut
backfills read back with DoGet, and the errors of bad tickets and commands.
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import (BEHAVIOR, REPO, TAOBAO_HOT_ROWS, Server, describe_mismatches, read_taobao,
                      run_replay_target)

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEC, MIN, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
MS = pa.timestamp("ms", tz="UTC")


# ---------------------------------------------------------------------------
# helpers

def cmd(**q) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_command(json.dumps(q))


def ticket(**q) -> fl.Ticket:
    return fl.Ticket(json.dumps(q).encode())


def read_ticket(uri: str, t: fl.Ticket) -> pa.Table:
    """Redeems a ticket on a client of its own."""
    client = fl.connect(uri)
    try:
        return client.do_get(t).read_all()
    finally:
        client.close()


def get_by_ids(server: Server, view: str, ids: list[str], **extra) -> pa.Table:
    client = server.flight()
    try:
        info = client.get_flight_info(cmd(view=view, ids=ids, **extra))
        assert len(info.endpoints) == 1, f"a query with ids has one endpoint, got {len(info.endpoints)}"
        assert info.total_records == len(ids)
        return client.do_get(info.endpoints[0].ticket).read_all()
    finally:
        client.close()


def py_columns(table: pa.Table) -> dict[str, list]:
    """{column: values} with timestamps as Unix ms."""
    out = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        out[name] = col.to_pylist()
    return out


def _close_quietly(writer) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 - the call's own error is what the test checks
        pass


def exchange(uri: str, command: dict, table: pa.Table, chunk: int | None = None) -> pa.Table:
    client = fl.connect(uri)
    writer = None
    try:
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(command)))
        writer.begin(table.schema)
        writer.write_table(table, max_chunksize=chunk)
        writer.done_writing()
        out = reader.read_all()
        writer.close()
        writer = None
        return out
    finally:
        if writer is not None:
            _close_quietly(writer)
        client.close()


def do_put(uri: str, table: pa.Table, chunk: int | None = None, path: str = "events") -> dict:
    client = fl.connect(uri)
    writer = None
    try:
        writer, meta = client.do_put(fl.FlightDescriptor.for_path(path), table.schema)
        writer.write_table(table, max_chunksize=chunk)
        writer.done_writing()
        buf = meta.read()
        writer.close()
        writer = None
        assert buf is not None, "DoPut sent no result metadata"
        return json.loads(buf.to_pybytes())
    finally:
        if writer is not None:
            _close_quietly(writer)
        client.close()


# ---------------------------------------------------------------------------
# The Taobao sample replayed into one server, shared by the read tests.

@pytest.fixture(scope="module")
def taobao_rows(taobao_path):
    rows = read_taobao(taobao_path)
    assert len(rows) == TAOBAO_HOT_ROWS
    return rows


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, taobao_path, taobao_rows):
    s = Server(tmp_path_factory.mktemp("flight-bulk"), name="flight-bulk")
    try:
        s.start()
        replay = run_replay_target(s.url, taobao_path)
        assert replay.returncode == 0, f"replay failed ({replay.returncode}):\n{replay.stdout}\n{replay.stderr}"
        s.wait_caught_up(min_log_end=TAOBAO_HOT_ROWS)
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------------------
# 1. partitioned full scans

@pytest.mark.parametrize("view", ["user_features", "item_features"])
def test_parallel_endpoints_reassemble(loaded, taobao_rows, view):
    s = loaded
    want_ids = {r[0] if view == "user_features" else r[1] for r in taobao_rows}
    client = s.flight()
    try:
        full_info = client.get_flight_info(fl.FlightDescriptor.for_path(view))
        # Fewer than 250,000 rows: the default plan is a single endpoint.
        assert len(full_info.endpoints) == 1, [e.ticket.ticket for e in full_info.endpoints]
        assert full_info.total_records == len(want_ids)
        full = client.do_get(full_info.endpoints[0].ticket).read_all()
    finally:
        client.close()
    id_col = full.column_names[0]
    assert id_col == ("user_id" if view == "user_features" else "item_id")
    full_ids = full.column(id_col).to_pylist()
    assert len(full_ids) == len(set(full_ids)) == full_info.total_records
    assert set(full_ids) == want_ids
    assert full_ids == sorted(full_ids, key=str.encode), "full scan not in id order"

    for partitions in (1, 3, 7):
        client = s.flight()
        try:
            info = client.get_flight_info(cmd(view=view, partitions=partitions))
        finally:
            client.close()
        assert info.total_records == len(want_ids)
        assert info.schema == full.schema
        eps = info.endpoints
        assert len(eps) == partitions, f"partitions={partitions}: {len(eps)} endpoints"
        queries = [json.loads(e.ticket.ticket) for e in eps]
        # Self-contained tickets whose [lo, hi) ranges chain without gaps.
        for i, q in enumerate(queries):
            assert q["view"] == view, q
            assert "partitions" not in q and "ids" not in q, q
            assert q.get("lo", "") == ("" if i == 0 else queries[i - 1]["hi"]), queries
            assert ("hi" in q) == (i < len(queries) - 1), queries
        # Every endpoint read at once, each by a client of its own.
        with ThreadPoolExecutor(max_workers=len(eps)) as pool:
            parts = list(pool.map(lambda e: read_ticket(s.flight_uri, e.ticket), eps))
        sizes = [p.num_rows for p in parts]
        prev_max = None
        for q, part in zip(queries, parts):
            assert part.schema == full.schema
            ids = part.column(id_col).to_pylist()
            assert ids, f"partitions={partitions}: endpoint {q} is empty"
            keys = [i.encode() for i in ids]
            assert all(a < b for a, b in zip(keys, keys[1:])), f"endpoint {q}: ids not strictly increasing"
            assert keys[0] >= q.get("lo", "").encode(), (q, ids[0])
            if "hi" in q:
                assert keys[-1] < q["hi"].encode(), (q, ids[-1])
            if prev_max is not None:
                assert prev_max < keys[0], f"endpoint {q} overlaps the one before it"
            prev_max = keys[-1]
        assert max(sizes) <= 1.5 * min(sizes), f"unbalanced partitions {sizes}"
        combined = pa.concat_tables(parts)
        assert combined.num_rows == info.total_records == sum(sizes)
        if not combined.equals(full):
            got, want = py_columns(combined), py_columns(full)
            bad = [f"{c}[{i}] ({want[id_col][i]}): got {got[c][i]!r}, want {want[c][i]!r}"
                   for c in want for i in range(min(len(got[c]), len(want[c]))) if got[c][i] != want[c][i]]
            pytest.fail(f"partitions={partitions}: reassembled scan differs from the single scan\n"
                        + describe_mismatches(bad, len(full_ids), "cells"))


# ---------------------------------------------------------------------------
# 2. DoGet by id == REST features:get

def _sample_ids(rows, index, n, seed):
    return random.Random(seed).sample(sorted({r[index] for r in rows}), n)


@pytest.mark.parametrize("as_of", [None, 1_511_661_600_000], ids=["now", "as_of_02h"])
def test_doget_equals_rest(loaded, taobao_rows, as_of):
    s = loaded
    extra = {} if as_of is None else {"as_of": as_of}
    for view, index in (("user_features", 0), ("item_features", 1)):
        ids = _sample_ids(taobao_rows, index, 300, seed=20240611 + index) + ["no-such-id-1", "no-such-id-2"]
        table = get_by_ids(s, view, ids, **extra)
        names = table.column_names[1:]
        assert len(names) >= 20, names
        cols = py_columns(table)
        assert cols[table.column_names[0]] == ids, "DoGet rows not in request order"
        r = s.post("/v1/features:get", json={"view": view, "ids": ids, "features": names, **extra})
        assert r.status_code == 200, r.text[:2000]
        ents = r.json()["entities"]
        assert [e["id"] for e in ents] == ids
        mismatches, statuses = [], set()
        for row, ent in enumerate(ents):
            feats = ent["features"]
            assert [f["name"] for f in feats] == names
            for f in feats:
                got, status = cols[f["name"]][row], f["status"]
                statuses.add(status)
                if status != "present":
                    if f["value"] is not None or got is not None:
                        mismatches.append(f"{ent['id']}.{f['name']}: status {status}, REST {f['value']!r}, Flight {got!r}")
                elif got is None or got != f["value"]:
                    mismatches.append(f"{ent['id']}.{f['name']}: REST {f['value']!r}, Flight {got!r}")
        assert not mismatches, describe_mismatches(mismatches, len(ids) * len(names), f"{view} values")
        # Unknown ids: not_found over REST, all nulls over Flight.
        assert all(f["status"] == "not_found" for e in ents[-2:] for f in e["features"])
        if as_of is not None:
            # The read as of 02:00 sees some entities with later events.
            assert "not_versioned" in statuses, statuses


# ---------------------------------------------------------------------------
# 3. point-in-time joins against pandas

def _parse_duration(text: str) -> int:
    m = re.fullmatch(r"(\d+)([mhd])", text)
    assert m, text
    return int(m.group(1)) * {"m": MIN, "h": HOUR, "d": DAY}[m.group(2)]


def feature_defs() -> dict[str, dict[str, dict]]:
    """{view: {feature: {key: value}}} of featurestore/features.yaml (flow-style lines)."""
    out: dict[str, dict[str, dict]] = {}
    view = None
    for line in (REPO / "featurestore/features.yaml").read_text().splitlines():
        m = re.match(r"\s*- name: (\w+)", line)
        if m:
            view = m.group(1)
            out[view] = {}
            continue
        m = re.match(r"\s*- \{(.*)\}\s*$", line)
        if m and view:
            kv = dict(p.split(": ", 1) for p in m.group(1).split(", "))
            out[view][kv["name"]] = kv
    return out


PIT_FEATURES = ["view_count_1h", "cart_count_24h", "purchase_count_7d", "purchase_rate_7d", "cart_rate_24h", "view_count"]


def brute_force(events: pd.DataFrame, spine: pd.DataFrame, entity: str, defs: dict[str, dict]) -> dict[str, list]:
    """Features of `entity` ("user" or "item") as of each spine row, from the raw events."""
    key = f"{entity}_id"
    m = spine[["row", key, "ts"]].merge(events[[key, "behavior", "ets"]], on=key, how="left")
    assert m["ets"].notna().all()
    T = m["ts"]

    def window_count(behavior: str, window: int) -> pd.Series:
        g = 5 * MIN if window < 12 * HOUR else HOUR
        lo = (T - window + 1) // g * g
        hit = (m["behavior"] == behavior) & (m["ets"] >= lo) & (m["ets"] <= T)
        return hit.groupby(m["row"]).sum().reindex(spine["row"]).astype("int64")

    out = {}
    for name, d in defs.items():
        if d["agg"] == "count" and "window" in d:
            out[name] = window_count(d["behavior"], _parse_duration(d["window"])).tolist()
        elif d["agg"] == "rate":
            w = _parse_duration(d["window"])
            num, den = window_count(d["numerator"], w), window_count(d["denominator"], w)
            pm, ps = float(d["prior_mean"]), float(d["prior_strength"])
            out[name] = ((num + ps * pm) / (den + ps)).tolist()
        elif d["agg"] == "count":  # lifetime: no history, null when a later event exists
            later = (m["ets"] > T).groupby(m["row"]).any().reindex(spine["row"])
            total = ((m["behavior"] == d["behavior"]) & (m["ets"] <= T)).groupby(m["row"]).sum().reindex(spine["row"])
            out[name] = [None if lt else int(n) for lt, n in zip(later, total)]
        else:
            raise AssertionError(f"no brute force for {name}: {d}")
    return out


def test_point_in_time_matches_pandas(loaded, taobao_rows):
    s = loaded
    defs = feature_defs()
    # The definitions the brute force relies on (prior, windows).
    assert defs["user_features"]["purchase_rate_7d"] == {
        "name": "purchase_rate_7d", "agg": "rate", "numerator": "purchase", "denominator": "view", "window": "7d",
        "prior_mean": "0.02", "prior_strength": "20"}
    assert {k: defs["item_features"]["cart_rate_24h"][k] for k in ("numerator", "denominator", "window", "prior_mean", "prior_strength")} \
        == {"numerator": "cart", "denominator": "view", "window": "24h", "prior_mean": "0.05", "prior_strength": "20"}
    # ... and the server's own description of them.
    views = {v["name"]: {f["name"]: f for f in v["features"]} for v in s.get("/v1/feature-views").json()["views"]}
    for view, name in (("user_features", "purchase_rate_7d"), ("item_features", "cart_rate_24h")):
        d, desc = defs[view][name], views[view][name]
        assert desc["aggregation"] == "rate" and desc["window"] == d["window"], desc
        assert d["prior_mean"] in desc["description"] and d["prior_strength"] in desc["description"], desc

    events = pd.DataFrame(taobao_rows, columns=["user_id", "item_id", "category_id", "behavior", "ets"])
    # ~670 events, stratified so that carts and purchases are well covered,
    # each asked about at its own ts, 1 ms before and 30 minutes after.
    rng = random.Random(7)
    by_beh = {b: [i for i, r in enumerate(taobao_rows) if r[3] == b] for b in BEHAVIOR.values()}
    picks = sorted(rng.sample(by_beh["view"], 467) + rng.sample(by_beh["cart"], 100)
                   + rng.sample(by_beh["fav"], 40) + rng.sample(by_beh["purchase"], 60))
    spine_rows = []
    for i in picks:
        user, item, _, beh, ts = taobao_rows[i]
        for variant, t in (("at", ts), ("before", ts - 1), ("after", ts + 30 * MIN)):
            spine_rows.append((user, item, t, len(spine_rows), variant, beh, ts))
    spine = pd.DataFrame(spine_rows, columns=["user_id", "item_id", "ts", "row", "variant", "src_behavior", "src_ts"])
    table = pa.table({
        "user_id": spine["user_id"].tolist(),
        "item_id": spine["item_id"].tolist(),
        "ts": pa.array(spine["ts"].tolist(), type=MS),
        "label": pa.array(spine["row"].tolist(), type=pa.int64()),
    })
    out = exchange(s.flight_uri, {"op": "point_in_time", "views": ["user_features", "item_features"],
                                  "features": PIT_FEATURES}, table, chunk=500)
    user_feats = [f for f in PIT_FEATURES if f in defs["user_features"]]
    item_feats = [f for f in PIT_FEATURES if f in defs["item_features"]]
    assert user_feats == ["view_count_1h", "cart_count_24h", "purchase_count_7d", "purchase_rate_7d", "view_count"]
    assert out.column_names == ["user_id", "item_id", "ts", "label"] + [f"user.{f}" for f in user_feats] + [f"item.{f}" for f in item_feats]
    assert out.num_rows == table.num_rows
    for c in ("user_id", "item_id", "ts", "label"):
        assert out.column(c).equals(table.column(c)), f"spine column {c} did not pass through unchanged"
    got = py_columns(out)

    mismatches = []
    expected = {}
    for entity, feats in (("user", user_feats), ("item", item_feats)):
        want = brute_force(events, spine, entity, {f: defs[f"{entity}_features"][f] for f in feats})
        for f in feats:
            col = f"{entity}.{f}"
            expected[col] = want[f]
            for i, (g, w) in enumerate(zip(got[col], want[f])):
                ok = (g is None) == (w is None) and (
                    g is None or (abs(g - w) <= 1e-9 if isinstance(w, float) else g == w))
                if not ok:
                    r = spine_rows[i]
                    mismatches.append(f"row {i} {col} {entity}={r[0] if entity == 'user' else r[1]} ts={r[2]} ({r[4]}): got {g!r}, want {w!r}")
    assert not mismatches, describe_mismatches(mismatches, out.num_rows * (len(user_feats) + len(item_feats)), "values")

    # Explicitly: the sampled event is counted as of its own ts and not 1 ms
    # before (the lower window edge is the same for both), i.e. the
    # difference is exactly the entity's events of that behavior at that ms.
    counter = {"view": "view_count_1h", "cart": "cart_count_24h", "purchase": "purchase_count_7d"}
    at_ms = events.groupby(["user_id", "behavior", "ets"]).size(), events.groupby(["item_id", "behavior", "ets"]).size()
    checked = {b: 0 for b in counter}
    for k in range(0, len(spine_rows), 3):
        user, item, ts, _, variant, beh, src_ts = spine_rows[k]
        assert variant == "at" and spine_rows[k + 1][2] == ts - 1
        if beh not in counter:
            continue
        for entity, eid, sizes in (("user", user, at_ms[0]), ("item", item, at_ms[1])):
            col = f"{entity}.{counter[beh]}"
            at, before = got[col][k], got[col][k + 1]
            n_at = int(sizes[(eid, beh, ts)])
            assert n_at >= 1
            assert at - before == n_at, (f"{col} of {eid}: {at} as of its {beh} at {ts}, {before} 1 ms before; "
                                         f"want a difference of {n_at} (the events at that ms)")
            assert before == expected[col][k + 1]
        checked[beh] += 1
    assert checked == {"view": 467, "cart": 100, "purchase": 60}, checked
    # A lifetime count is never read from the future: always null 1 ms
    # before an event of the entity.
    assert all(got["user.view_count"][k + 1] is None and got["item.view_count"][k + 1] is None
               for k in range(0, len(spine_rows), 3))
    # The join saw real data: most rows have non-zero 1 h counts and some
    # rows have lifetime values (no later event).
    assert sum(1 for v in got["user.view_count_1h"] if v) > len(spine_rows) // 3
    assert any(v is not None for v in got["user.view_count"])


# ---------------------------------------------------------------------------
# 4. DoPut then DoGet

LIFETIME = ["view_count", "cart_count", "fav_count", "purchase_count", "first_event_ts", "last_event_ts"]
ALIASES = {"view": "view", "pv": "view", "cart": "cart", "fav": "fav", "purchase": "purchase", "buy": "purchase"}


def test_doput_then_doget_roundtrip(server_factory):
    s = server_factory()
    rng = random.Random(11)
    users = [f"put-u{i}" for i in range(23)]
    items = [f"put-i{i}" for i in range(31)]
    rows = []
    for k in range(400):
        rows.append({"user_id": rng.choice(users), "item_id": rng.choice(items), "category_id": f"c{rng.randrange(5)}",
                     "behavior": rng.choice(list(ALIASES)), "ts": BASE + k * 7 * SEC + rng.randrange(1000),
                     "event_id": f"put-e{k}"})
    bad_index = 137
    rows.insert(bad_index, {"user_id": "put-u0", "item_id": "put-i0", "category_id": "c0", "behavior": "click",
                            "ts": BASE + 5 * SEC, "event_id": "put-bad"})
    table = pa.table({
        "user_id": [r["user_id"] for r in rows],
        "item_id": [r["item_id"] for r in rows],
        "category_id": [r["category_id"] for r in rows],
        "behavior": [r["behavior"] for r in rows],
        "ts": pa.array([r["ts"] for r in rows], type=MS),
        "event_id": [r["event_id"] for r in rows],
    })
    res = do_put(s.flight_uri, table, chunk=64)
    assert res["accepted"] == 400 and res["rejected"] == 1, res
    assert res["rejected_by_code"] == {"unknown_behavior": 1}, res
    assert [(r.get("index"), r["field"], r["code"]) for r in res["rejections"]] == [(bad_index, "behavior", "unknown_behavior")], res
    assert "click" in res["rejections"][0]["reason"]
    st = s.wait_caught_up()
    assert st["events_applied"] == 400

    good = [r for r in rows if r["behavior"] != "click"]
    for view, key in (("user_features", "user_id"), ("item_features", "item_id")):
        want: dict[str, dict] = {}
        for r in good:
            a = want.setdefault(r[key], {n: 0 for n in LIFETIME[:4]} | {"first_event_ts": r["ts"], "last_event_ts": r["ts"]})
            a[ALIASES[r["behavior"]] + "_count"] += 1
            a["first_event_ts"] = min(a["first_event_ts"], r["ts"])
            a["last_event_ts"] = max(a["last_event_ts"], r["ts"])
        ids = sorted(want) + [f"{key}-never-seen"]
        t = get_by_ids(s, view, ids, columns=LIFETIME)
        assert t.column_names == [key] + LIFETIME
        cols = py_columns(t)
        assert cols[key] == ids
        got = {i: {n: cols[n][j] for n in LIFETIME} for j, i in enumerate(ids)}
        assert got.pop(ids[-1]) == {n: None for n in LIFETIME}
        assert got == want
        # The full scan has exactly these entities.
        client = s.flight()
        try:
            info = client.get_flight_info(fl.FlightDescriptor.for_path(view))
            assert info.total_records == len(want)
        finally:
            client.close()


def test_doput_rejection_of_first_row_has_index(server_factory):
    s = server_factory()
    table = pa.table({"user_id": ["u", "u"], "item_id": ["i", "i"], "behavior": ["click", "view"],
                      "ts": pa.array([BASE, BASE + 1], type=pa.int64())})
    res = do_put(s.flight_uri, table)
    assert res["accepted"] == 1 and res["rejected"] == 1, res
    assert res["rejections"][0].get("index") == 0, res


# ---------------------------------------------------------------------------
# 5. errors

def expect_invalid(fn, *fragments):
    with pytest.raises(pa.ArrowInvalid) as exc:
        fn()
    msg = str(exc.value)
    assert "invalid argument" in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def expect_not_found(fn, *fragments):
    with pytest.raises(pa.ArrowKeyError) as exc:
        fn()
    msg = str(exc.value)
    assert "not found" in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def test_bad_tickets_and_commands(server_factory):
    s = server_factory()
    n_users = 200
    s.ingest([{"user_id": f"eu{i:03d}", "item_id": f"ei{i % 17}", "behavior": "view", "ts": BASE + i * SEC}
              for i in range(n_users)])
    s.wait_caught_up()
    uri = s.flight_uri
    client = s.flight()
    try:
        info = lambda **q: client.get_flight_info(cmd(**q))  # noqa: E731
        get = lambda raw: client.do_get(fl.Ticket(raw)).read_all()  # noqa: E731

        # Tickets that are not a query.
        expect_invalid(lambda: get(b"\x00\xffgarbage"), "ticket")
        expect_invalid(lambda: get(b""), "ticket")
        expect_invalid(lambda: get(b'["user_features"]'), "ticket")
        expect_invalid(lambda: get(json.dumps({"view": "user_features", "bogus": 1}).encode()), "ticket", "bogus")
        expect_invalid(lambda: get(b'{"view": "user_features"} {"view": "item_features"}'), "ticket")
        expect_invalid(lambda: get(b"{}"), "view")
        expect_invalid(lambda: info(view="user_features", bogus=1), "descriptor.cmd", "bogus")
        expect_invalid(lambda: info(view="user_features", as_of=-5), "as_of")

        # partitions: 0 (the default) to 64.
        for p in (-1, 65, 1000):
            expect_invalid(lambda: info(view="user_features", partitions=p), "partitions", str(p))
        expect_invalid(lambda: get(json.dumps({"view": "user_features", "partitions": 65}).encode()), "partitions")
        for p, want in ((0, 1), (1, 1), (3, 3), (64, 64)):
            eps = info(view="user_features", partitions=p).endpoints
            assert len(eps) == want, (p, len(eps))
        eps = info(view="user_features", partitions=64).endpoints
        with ThreadPoolExecutor(max_workers=8) as pool:
            parts = list(pool.map(lambda e: read_ticket(uri, e.ticket), eps))
        ids = [i for p in parts for i in p.column("user_id").to_pylist()]
        assert ids == [f"eu{i:03d}" for i in range(n_users)]

        # lo / hi ranges: hi must be after lo.
        for lo, hi in (("eu050", "eu050"), ("eu100", "eu050")):
            expect_invalid(lambda: get(json.dumps({"view": "user_features", "lo": lo, "hi": hi}).encode()), "hi", lo, hi)
        t = read_ticket(uri, ticket(view="user_features", lo="eu050", hi="eu060"))
        assert t.column("user_id").to_pylist() == [f"eu{i:03d}" for i in range(50, 60)]

        # ids are not combined with partitions, lo or hi.
        expect_invalid(lambda: info(view="user_features", ids=["eu001"], partitions=2), "ids")
        expect_invalid(lambda: get(json.dumps({"view": "user_features", "ids": ["eu001"], "lo": "eu000"}).encode()), "ids")
        expect_invalid(lambda: get(json.dumps({"view": "user_features", "ids": ["eu001"], "hi": "eu100"}).encode()), "ids")

        # Unknown views: NOT_FOUND, naming the view.
        expect_not_found(lambda: client.get_flight_info(fl.FlightDescriptor.for_path("nope_view")), "nope_view")
        expect_not_found(lambda: info(view="nope_view"), "nope_view")
        expect_not_found(lambda: get(json.dumps({"view": "nope_view"}).encode()), "nope_view")
        expect_not_found(lambda: client.get_schema(fl.FlightDescriptor.for_path("nope_view")), "nope_view")

        # Unknown columns: INVALID_ARGUMENT naming the field and the column.
        expect_invalid(lambda: info(view="user_features", columns=["view_count", "zzz_col"]), "columns", "zzz_col")
        expect_invalid(lambda: get(json.dumps({"view": "item_features", "columns": ["zzz_col"]}).encode()), "columns", "zzz_col")
    finally:
        client.close()

    # DoExchange: the spine needs ts (timestamp or int64), the id columns of
    # its views, and known views and features.
    pit = {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h"]}
    no_ts = pa.table({"user_id": ["eu001"], "label": [1]})
    expect_invalid(lambda: exchange(uri, pit, no_ts), "ts")
    expect_invalid(lambda: exchange(uri, pit, pa.table({"user_id": ["eu001"], "ts": ["yesterday"]})), "spine.ts")
    spine = pa.table({"user_id": ["eu001"], "ts": pa.array([BASE + 10 * SEC], type=MS)})
    expect_invalid(lambda: exchange(uri, {**pit, "features": ["zzz_feat"]}, spine), "features", "zzz_feat")
    expect_invalid(lambda: exchange(uri, {**pit, "views": ["item_features"]}, spine), "item_id")
    expect_invalid(lambda: exchange(uri, {**pit, "op": "scan"}, spine), "op")
    expect_invalid(lambda: exchange(uri, {**pit, "extra": 1}, spine), "descriptor.cmd", "extra")
    expect_not_found(lambda: exchange(uri, {**pit, "views": ["nope_view"]}, spine), "nope_view")
    # eu001 has one view, at BASE + 1 s: seen 9 s later, not 1 ms before it.
    spine = pa.table({"user_id": ["eu001", "eu001"], "ts": pa.array([BASE + 10 * SEC, BASE + SEC - 1], type=MS)})
    assert exchange(uri, pit, spine).column("user.view_count_1h").to_pylist() == [1, 0]

    # DoPut: only the event columns.
    ev = {"user_id": ["pu"], "item_id": ["pi"], "behavior": ["view"], "ts": pa.array([BASE], type=pa.int64())}
    expect_invalid(lambda: do_put(uri, pa.table({**ev, "color": ["red"]})), "schema", "color")
    expect_invalid(lambda: do_put(uri, pa.table({k: v for k, v in ev.items() if k != "ts"})), "ts")
    expect_invalid(lambda: do_put(uri, pa.table({**ev, "ts": ["2026-01-01"]})), "schema.ts")
    expect_invalid(lambda: do_put(uri, pa.table(ev), path="not-events"), "descriptor")

    # None of that changed anything or hurt the server.
    assert s.wait_caught_up()["events_applied"] == n_users
    assert read_ticket(uri, ticket(view="user_features", ids=["eu007"], columns=["view_count"])).column("view_count").to_pylist() == [1]


def test_flight_ceiling_serves_the_file_batches(tmp_path):
    """`recsys flight-ceiling` (make bench-flight's ceiling) serves an IPC
    file's batches: all of them for any ticket, batches i, i+n, ... for i/n;
    a malformed i/n ticket is an error."""
    import subprocess

    from conftest import recsys_bin

    batches = [pa.record_batch({"user_id": [f"u{b}_{i}" for i in range(10 + b)], "n": list(range(10 + b))})
               for b in range(5)]
    path = tmp_path / "b.arrow"
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, batches[0].schema) as w:
        for b in batches:
            w.write_batch(b)
    p = subprocess.Popen([recsys_bin(), "flight-ceiling", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on ") and "(5 batches, 60 rows)" in line, line
        c = fl.connect("grpc://" + line.split()[2])
        whole = c.do_get(fl.Ticket(b"all")).read_all()
        assert whole.to_pylist() == pa.Table.from_batches(batches).to_pylist()
        parts = [c.do_get(fl.Ticket(f"{i}/2".encode())).read_all() for i in range(2)]
        assert parts[0].to_pylist() == pa.Table.from_batches(batches[0::2]).to_pylist()
        assert parts[1].to_pylist() == pa.Table.from_batches(batches[1::2]).to_pylist()
        with pytest.raises(fl.FlightError, match="want i/n"):
            c.do_get(fl.Ticket(b"2/2")).read_all()
        c.close()
    finally:
        p.terminate()
        assert p.wait(timeout=30) is not None
