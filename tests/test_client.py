"""The Python client (clients/python, `import recsys`) against the real binary:
every method, checked against the raw REST answers, a pandas reference of the
point-in-time join and the Flight scans; the types pandas 2 and 3 produce;
error classes with the server's field and reason; tokens and TLS.

`make test-client-latest` runs this module again with the newest pandas and
pyarrow (tests/requirements-latest.txt)."""

from __future__ import annotations

import datetime as dt
import random
import re
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from urllib3.exceptions import InsecureRequestWarning

import recsys
from conftest import Server, chunks, free_port

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEC, MIN, HOUR, DAY = 1000, 60_000, 3_600_000, 86_400_000
USERS = [f"u{i:02d}" for i in range(40)]
ITEMS = [f"i{i:02d}" for i in range(60)]
CATEGORY = {it: f"c{int(it[1:]) % 6}" for it in ITEMS}
BEHAVIORS = ["view", "cart", "fav", "purchase"]


def dataset(n: int = 3000, seed: int = 5) -> list[dict]:
    """n events of 40 users on 60 items over three days, in random time order."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        item = rng.choice(ITEMS)
        out.append({"event_id": f"e{k}", "user_id": rng.choice(USERS), "item_id": item, "category_id": CATEGORY[item],
                    "behavior": rng.choices(BEHAVIORS, [70, 15, 8, 7])[0], "ts": BASE + rng.randrange(3 * DAY)})
    return out


EVENTS = dataset()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A server loaded with EVENTS through plain REST calls (not the client)."""
    s = Server(tmp_path_factory.mktemp("client"), name="client-server")
    try:
        s.start()
        for batch in chunks(EVENTS, 1000):
            assert s.ingest(batch)["accepted"] == len(batch)
        assert s.wait_caught_up()["events_applied"] == len(EVENTS)
        yield s
    finally:
        s.close()


@pytest.fixture
def client(loaded):
    with recsys.Client(loaded.url, loaded.flight_uri) as c:
        yield c


def py(v):
    """A DataFrame cell as the REST JSON value: None for missing, Unix ms for times, lists as lists."""
    if v is None or v is pd.NaT or v is pd.NA:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.value // 1_000_000
    if isinstance(v, (np.ndarray, list)):
        return [py(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def rest_features(s: Server, view: str, ids: list[str], features=None, as_of=None) -> list[dict]:
    body = {"view": view, "ids": ids}
    if features is not None:
        body["features"] = features
    if as_of is not None:
        body["as_of"] = as_of
    r = s.post("/v1/features:get", json=body)
    assert r.status_code == 200, r.text
    return r.json()["entities"]


def ms(ts: str | None) -> int | None:
    return None if ts is None else int(dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


# -- health, stats, models, views ---------------------------------------------------

def test_health_ready_stats_models_views(loaded, client):
    assert client.health() is True
    ready = client.ready()
    assert ready.ready and bool(ready) and "applied" in ready.detail, ready
    st = client.stats()
    assert isinstance(st, recsys.Stats) and st.caught_up
    assert {k: getattr(st, k) for k in loaded.stats()} == loaded.stats()
    assert st.events_applied == len(EVENTS) and st.users == len({e["user_id"] for e in EVENTS})
    assert st.max_event_ts == max(e["ts"] for e in EVENTS)
    assert client.wait_caught_up(timeout=5) == st

    models = {m.name: m for m in client.models()}
    raw = {m["name"]: m for m in loaded.get("/v1/models").json()["models"]}
    assert set(models) == set(raw) == {"item2item", "user2user", "mf", "ranker"}
    for name, m in models.items():
        assert m.version == int(raw[name]["version"]) and m.examples == int(raw[name]["examples"]) > 0, (m, raw[name])
        assert m.last_update == dt.datetime.fromisoformat(raw[name]["last_update"].replace("Z", "+00:00")), m
        assert m.last_update.tzinfo is not None and m.frozen is False
    ranker = models["ranker"]
    assert 0 < ranker.rolling_auc <= 1 and ranker.rolling_log_loss > 0, ranker  # numbers, not the JSON strings

    views = {v.name: v for v in client.feature_views()}
    assert {"user_features", "item_features", "category_features"} <= set(views)
    assert views["item_features"].id_column == "item_id" and views["item_features"].feature("category_id").type == "string"
    assert views["user_features"].feature("view_count_1h").window == "1h"
    flights = client.list_views()
    assert {"user_features", "item_features", "item_neighbors", "ranker_weights"} <= set(flights)
    assert flights["user_features"].field("last_event_ts").type == pa.timestamp("ms", tz="UTC")
    vs = client.view_stats()
    assert vs["views"]["user_features"]["rows"] == st.users and vs["views"]["item_features"]["rows"] == st.items


# -- features -----------------------------------------------------------------------

def test_features_match_rest(loaded, client):
    ids = ["u03", "nobody", "u07", "u03", "u11"]
    df = client.features("user_features", ids, with_status=True)
    ents = rest_features(loaded, "user_features", ids)
    names = [f["name"] for f in ents[0]["features"]]
    assert len(names) >= 20
    assert list(df.columns) == ["user_id"] + [c for n in names for c in (n, f"{n}.status", f"{n}.event_time")]
    assert df["user_id"].tolist() == ids and len(df) == len(ids)
    mismatches = []
    for row, ent in enumerate(ents):
        for f in ent["features"]:
            got = (py(df[f["name"]].iloc[row]), df[f"{f['name']}.status"].iloc[row], py(df[f"{f['name']}.event_time"].iloc[row]))
            want = (f["value"], f["status"], ms(f["event_time"]))
            if isinstance(want[0], float):
                ok = got[0] is not None and abs(got[0] - want[0]) <= 1e-12 and got[1:] == want[1:]
            else:
                ok = got == want
            if not ok:
                mismatches.append(f"{ent['id']}.{f['name']}: client {got}, REST {want}")
    assert not mismatches, "\n".join(mismatches[:20])
    assert set(df.loc[df.user_id == "nobody", "view_count.status"]) == {"not_found"}
    # Typed as in a Flight scan.
    assert str(df["last_event_ts"].dtype) == "datetime64[ms, UTC]"
    assert str(df["view_count.event_time"].dtype) == "datetime64[ms, UTC]"
    assert df["purchase_rate_7d"].dtype == np.float64
    assert df["view_count"].dtype == np.float64  # an unknown id makes the int column nullable (NaN)
    known = client.features("user_features", ["u03", "u07"], ["view_count", "recent_items"])
    assert list(known.columns) == ["user_id", "view_count", "recent_items"] and known["view_count"].dtype == np.int64
    assert [list(v) for v in known["recent_items"]] == [f["value"] for e in rest_features(
        loaded, "user_features", ["u03", "u07"], ["recent_items"]) for f in e["features"]]
    one = client.features("item_features", "i05", ["category_id", "view_count"])  # one id as a string
    assert one.to_dict("list") == {"item_id": ["i05"], "category_id": [CATEGORY["i05"]],
                                   "view_count": [sum(1 for e in EVENTS if e["item_id"] == "i05" and e["behavior"] == "view")]}
    cats = client.features("category_features", ["c1", "c9"])
    assert list(cats.columns) == ["category_id", "top_items_1h", "top_items_24h"]
    assert set(cats["top_items_24h"].iloc[0]) <= {i for i in ITEMS if CATEGORY[i] == "c1"} and cats["top_items_24h"].iloc[1] is None


def test_features_as_of_and_many_ids(loaded, client):
    as_of = BASE + DAY + 5 * HOUR
    feats = ["view_count", "view_count_1h", "cart_count_24h", "purchase_rate_7d", "last_event_ts"]
    df = client.features("item_features", ITEMS, feats, as_of=pd.Timestamp(as_of, unit="ms", tz="UTC"), with_status=True)
    ents = rest_features(loaded, "item_features", ITEMS, feats, as_of=as_of)
    for row, ent in enumerate(ents):
        for f in ent["features"]:
            assert df[f"{f['name']}.status"].iloc[row] == f["status"]
            got = py(df[f["name"]].iloc[row])
            assert got == f["value"] or (isinstance(got, float) and abs(got - f["value"]) < 1e-12), (ent["id"], f, got)
    # Lifetime values have no history: not versioned in the past, whatever the as_of type.
    assert set(df["view_count.status"]) == {"not_versioned"} and df["view_count"].isna().all()
    same = client.features("item_features", ITEMS, feats, as_of="2026-01-02T05:00:00Z", with_status=True)
    pd.testing.assert_frame_equal(same, df)
    pd.testing.assert_frame_equal(client.features("item_features", ITEMS, feats, as_of=as_of, with_status=True), df)
    # More ids than one request takes (1,000): several requests, one frame in order.
    ids = [f"ghost{i}" for i in range(2100)] + ["u01"]
    big = client.features("user_features", ids, ["view_count"])
    assert big["user_id"].tolist() == ids
    assert big["view_count"].isna().sum() == 2100
    assert big["view_count"].iloc[-1] == sum(1 for e in EVENTS if e["user_id"] == "u01" and e["behavior"] == "view")
    empty = client.features("user_features", [], ["view_count"])
    assert list(empty.columns) == ["user_id", "view_count"] and len(empty) == 0


def test_features_format_columns(client):
    # The columnar answer gives the same frame as the rows answer, statuses, times and dtypes included.
    as_of = BASE + DAY + 5 * HOUR
    for args, kw in [(("user_features", ["u03", "nobody", "u07", "u03", "u11"]), {}),
                     (("item_features", ITEMS, ["view_count", "category_id", "purchase_rate_7d", "last_event_ts"]), {"as_of": as_of}),
                     (("item_features", ITEMS + ["nobody"]), {"as_of": as_of}),
                     (("category_features", ["c1", "c9"]), {}),
                     (("user_features", "u05", ["recent_items", "view_count_1h"]), {}),
                     (("user_features", [f"ghost{i}" for i in range(1500)] + ["u01"], ["view_count"]), {}),  # two requests
                     (("user_features", [], ["view_count"]), {})]:
        for with_status in (False, True):
            rows = client.features(*args, **kw, with_status=with_status)
            cols = client.features(*args, **kw, with_status=with_status, format="columns")
            pd.testing.assert_frame_equal(cols, rows)
    with pytest.raises(ValueError, match="format"):
        client.features("user_features", ["u01"], format="arrow")
    with pytest.raises(recsys.InvalidArgument, match="named twice"):
        client.features("user_features", ["u01"], ["view_count", "view_count"], format="columns")
    # The rows answer takes a feature twice, as before.
    assert list(client.features("user_features", ["u01"], ["view_count", "view_count"]).columns) == ["user_id", "view_count"]


# -- scans --------------------------------------------------------------------------

def flight_doget_calls(s: Server) -> float:
    total = 0.0
    for line in s.get("/metrics").text.splitlines():
        if line.startswith("recsys_server_request_duration_seconds_count{") and 'listener="flight"' in line and "DoGet" in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("view", ["user_features", "item_features"])
def test_scan_equals_features(loaded, client, view):
    whole = client.scan(view)
    id_col = whole.column_names[0]
    ids = whole.column(id_col).to_pylist()
    assert ids == sorted(ids) and len(ids) == len({e[id_col] for e in EVENTS})
    before = flight_doget_calls(loaded)
    parts = client.scan(view, partitions=5)  # five endpoints, read in parallel
    assert flight_doget_calls(loaded) - before == 5
    assert parts.equals(whole)
    # A scan and the online read of the same ids are the same frame.
    online = client.features(view, ids)
    pd.testing.assert_frame_equal(whole.to_pandas(), online)
    some = ids[::7] + ["no-such-id"]
    cols = whole.column_names[1:6]
    pd.testing.assert_frame_equal(client.scan(view, cols, ids=some).to_pandas(), client.features(view, some, cols))
    as_of = BASE + 2 * DAY
    pd.testing.assert_frame_equal(client.scan(view, cols, ids=some, as_of=as_of).to_pandas(),
                                  client.features(view, some, cols, as_of=as_of))


def test_scan_model_tables(client):
    neighbors = client.scan("item_neighbors")
    assert neighbors.column_names == ["item_id", "neighbor_id", "rank", "score"] and neighbors.num_rows > 0
    assert set(neighbors.column("item_id").to_pylist()) <= set(ITEMS)
    weights = client.scan("ranker_weights")
    assert weights.num_rows > 10 and weights.column_names == ["feature", "weight", "version", "history_weight"]
    factors = client.scan("user_factors")
    assert set(factors.column("user_id").to_pylist()) == set(USERS)


# -- recommendations ----------------------------------------------------------------

def raw_items(s: Server, path: str, **params) -> dict:
    r = s.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def as_rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(py(v) for v in row) for row in df.itertuples(index=False)]


def test_recommend(loaded, client):
    user = "u05"
    recs = client.recommend(user, k=8)
    raw = raw_items(loaded, f"/v1/users/{user}/recommendations", k=8)
    assert list(recs.columns) == ["item_id", "score", "reason"]
    assert as_rows(recs) == [(it["item_id"], it["score"], it["reason"]) for it in raw["items"]]
    assert len(recs) == 8 and recs["score"].is_monotonic_decreasing and recs["reason"].str.len().min() > 0
    assert recs.attrs["model_version"] == raw["model_version"] != ""
    bought = {e["item_id"] for e in EVENTS if e["user_id"] == user and e["behavior"] == "purchase"}
    assert not set(recs["item_id"]) & bought

    in_cat = client.recommend(user, k=5, category="c2")
    assert len(in_cat) > 0 and {CATEGORY[i] for i in in_cat["item_id"]} == {"c2"}
    excluded = recs["item_id"].tolist()[:3]
    rest = client.recommend(user, k=8, exclude=excluded)
    assert not set(rest["item_id"]) & set(excluded)
    assert as_rows(rest) == [(it["item_id"], it["score"], it["reason"])
                             for it in raw_items(loaded, f"/v1/users/{user}/recommendations", k=8, exclude=excluded)["items"]]
    seen = {e["item_id"] for e in EVENTS if e["user_id"] == user}
    fresh = client.recommend(user, k=10, exclude_seen=True)
    assert len(fresh) > 0 and not set(fresh["item_id"]) & seen
    stranger = client.recommend("strangér/1", k=4)  # an unknown user, with an id that needs escaping
    assert as_rows(stranger) == [(it["item_id"], it["score"], it["reason"]) for it in
                                 raw_items(loaded, "/v1/users/strang%C3%A9r%2F1/recommendations", k=4)["items"]]
    assert len(stranger) == 4 and set(stranger["item_id"]) <= set(ITEMS)
    with pytest.raises(TypeError):
        client.recommend(user, k=5, exclude_sen=True)  # a misspelt filter is an error, not silently ignored


def test_similar_items_users_popular(loaded, client):
    sim = client.similar_items("i07", k=5)
    assert as_rows(sim) == [(it["item_id"], it["score"], it["reason"]) for it in raw_items(loaded, "/v1/items/i07/similar", k=5)["items"]]
    assert len(sim) == 5 and "i07" not in set(sim["item_id"])
    users = client.similar_users("u09", k=4)
    assert list(users.columns) == ["user_id", "score"]
    assert as_rows(users) == [(u["user_id"], u["score"]) for u in raw_items(loaded, "/v1/users/u09/similar", k=4)["users"]]
    assert len(users) == 4 and "u09" not in set(users["user_id"])
    pop = client.popular(k=6)
    assert as_rows(pop) == [(it["item_id"], it["score"], it["reason"]) for it in raw_items(loaded, "/v1/items/popular", k=6)["items"]]
    c3 = client.popular(k=20, category="c3")
    assert set(c3["item_id"]) == {i for i in ITEMS if CATEGORY[i] == "c3"}
    end = max(e["ts"] for e in EVENTS)
    hour = client.popular(k=3, window="1h", by="view", as_of=end)
    want = raw_items(loaded, "/v1/items/popular", k=3, window="1h", by="view", as_of=end)["items"]
    assert as_rows(hour) == [(it["item_id"], it["score"], it["reason"]) for it in want] and len(want) > 0
    assert list(client.similar_items("no-such-item", k=3).columns) == ["item_id", "score", "reason"]
    nobody = client.similar_users("no-such-user")
    assert list(nobody.columns) == ["user_id", "score"] and nobody.empty


def test_history(loaded, client):
    hist = client.history("u09", limit=5)
    raw = raw_items(loaded, "/v1/users/u09/history", limit=5)["items"]
    assert list(hist.columns) == ["item_id", "category_id", "behavior", "event_time", "events"]
    assert 0 < len(hist) <= 5 and list(hist["item_id"]) == [r["item_id"] for r in raw]
    assert list(hist["behavior"]) == [r["behavior"] for r in raw]
    assert list(hist["events"]) == [int(r["events"]) for r in raw]
    # Newest first, and each item is one the user touched, in its category.
    times = list(hist["event_time"])
    assert times == sorted(times, reverse=True) and str(hist["event_time"].dt.tz) == "UTC"
    mine = {e["item_id"] for e in EVENTS if e["user_id"] == "u09"}
    assert set(hist["item_id"]) <= mine
    assert all(CATEGORY[i] == c for i, c in zip(hist["item_id"], hist["category_id"]))
    newest = max(e["ts"] for e in EVENTS if e["user_id"] == "u09")
    assert int(hist["event_time"].iloc[0].timestamp() * 1000) == newest
    assert client.history("no-such-user").empty


# -- point-in-time training sets ------------------------------------------------------

PIT = ["view_count_1h", "cart_count_24h", "purchase_count_7d", "view_count"]


def reference(events: pd.DataFrame, spine: pd.DataFrame, entity: str) -> dict[str, list]:
    """The features of `entity` as of each spine row, computed with pandas from the raw events:
    windows count lo <= ts <= T with lo = floor_g(T - W + 1) (g = 5 min under 12 h, else 1 h);
    a lifetime count is null when the entity has a later event."""
    key = f"{entity}_id"
    rows = spine[["row", key, "T"]]
    m = rows.merge(events[[key, "behavior", "ets"]], on=key, how="left")

    def per_row(mask: pd.Series) -> pd.Series:
        return mask.groupby(m["row"]).sum().reindex(rows["row"]).fillna(0).astype("int64")

    out = {}
    for name, behavior, window in (("view_count_1h", "view", HOUR), ("cart_count_24h", "cart", DAY),
                                   ("purchase_count_7d", "purchase", 7 * DAY)):
        g = 5 * MIN if window < 12 * HOUR else HOUR
        lo = (m["T"] - window + 1) // g * g
        out[name] = per_row((m["behavior"] == behavior) & (m["ets"] >= lo) & (m["ets"] <= m["T"])).tolist()
    later = per_row(m["ets"] > m["T"]) > 0
    total = per_row((m["behavior"] == "view") & (m["ets"] <= m["T"]))
    known = per_row(m["ets"].notna()) > 0
    out["view_count"] = [None if lt else (int(n) if k else None) for lt, n, k in zip(later, total, known)]
    for name in ("view_count_1h", "cart_count_24h", "purchase_count_7d"):
        out[name] = [v if k else None for v, k in zip(out[name], known)]
    return out


@pytest.fixture(scope="module")
def spine():
    """Rows at sampled events' times, 1 ms before and 30 min after, plus an unknown user;
    ts as a tz-aware datetime column, a label and an index of its own."""
    rng = random.Random(11)
    rows = []
    for e in rng.sample(EVENTS, 150):
        for t in (e["ts"], e["ts"] - 1, e["ts"] + 30 * MIN):
            rows.append((e["user_id"], e["item_id"], t))
    rows.append(("stranger", "i01", BASE + DAY))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "T"])
    df["row"] = range(len(df))
    df["label"] = [r % 2 for r in range(len(df))]
    df["ts"] = pd.to_datetime(df["T"], unit="ms", utc=True).dt.tz_convert("Europe/Paris")
    df.index = pd.Index([f"r{i}" for i in range(len(df))], name="key")
    return df


def test_training_set_matches_pandas(client, spine):
    t = client.training_set(spine[["user_id", "item_id", "ts", "label"]], PIT)
    assert list(t.columns) == ["user_id", "item_id", "ts", "label"] + [f"user.{f}" for f in PIT] + [f"item.{f}" for f in PIT]
    assert t.index.equals(spine.index), "the spine's index is kept"
    pd.testing.assert_frame_equal(t[["user_id", "item_id", "ts", "label"]], spine[["user_id", "item_id", "ts", "label"]])
    events = pd.DataFrame(EVENTS).rename(columns={"ts": "ets"})
    mismatches = []
    for entity in ("user", "item"):
        want = reference(events, spine, entity)
        for f in PIT:
            got = [py(v) for v in t[f"{entity}.{f}"]]
            for i, (g, w) in enumerate(zip(got, want[f])):
                if g != w:
                    mismatches.append(f"row {i} {entity}.{f} {spine[entity + '_id'].iloc[i]} T={spine['T'].iloc[i]}: got {g}, want {w}")
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
    # Leak-free: an event is counted as of its own ms, never 1 ms before it.
    sampled = spine.iloc[:-1]  # (at, 1 ms before, 30 min after) per sampled event
    events_at = events.groupby(["user_id", "behavior", "ets"]).size()
    for k in range(0, len(sampled), 3):
        user, t_at = sampled["user_id"].iloc[k], sampled["T"].iloc[k]
        n_views = int(events_at.get((user, "view", t_at), 0))
        at, before = t["user.view_count_1h"].iloc[k], t["user.view_count_1h"].iloc[k + 1]
        assert at - before == n_views, (user, t_at, at, before, n_views)
    assert sum(1 for v in t["user.view_count_1h"] if v) > len(t) // 4  # the join saw data


def test_training_set_time_and_string_types(client, spine):
    """The same spine as Unix ms, naive datetimes of other units, pandas string dtypes,
    categoricals and large_string Arrow columns: the same features."""
    feats = ["view_count_1h", "purchase_count_7d"]
    base = spine[["user_id", "item_id", "ts", "label"]].reset_index(drop=True)
    want = client.training_set(base, feats)
    variants = {
        "int ms": base.assign(ts=spine["T"].to_numpy()),
        "naive us": base.assign(ts=pd.to_datetime(spine["T"].to_numpy(), unit="ms").astype("datetime64[us]")),
        "naive ns": base.assign(ts=pd.to_datetime(spine["T"].to_numpy(), unit="ms")),
        "string[pyarrow]": base.assign(user_id=base["user_id"].astype("string[pyarrow]"),
                                       item_id=base["item_id"].astype("string[python]")),
        "categorical": base.assign(user_id=base["user_id"].astype("category")),
        "iso strings": base.assign(ts=[dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).isoformat(timespec="milliseconds")
                                       for t in spine["T"]]),
    }
    for name, frame in variants.items():
        got = client.training_set(frame, feats)
        pd.testing.assert_frame_equal(got[[f"user.{f}" for f in feats] + [f"item.{f}" for f in feats]],
                                      want[[f"user.{f}" for f in feats] + [f"item.{f}" for f in feats]], obj=name)
    table = pa.table({"user_id": pa.array(base["user_id"].tolist(), pa.large_string()),
                      "ts": pa.array([t * 1_000_000 + 999 for t in spine["T"]], pa.timestamp("ns", tz="Asia/Tokyo")),
                      "note": pa.array(["x"] * len(base), pa.large_string())})
    got = client.training_set(table, feats)  # only user_id: the user view alone
    assert list(got.columns) == ["user_id", "ts", "note"] + [f"user.{f}" for f in feats]
    pd.testing.assert_frame_equal(got[[f"user.{f}" for f in feats]], want[[f"user.{f}" for f in feats]])
    # Unix seconds are never read as milliseconds: refused, unless said so.
    secs = base.assign(ts=spine["T"].to_numpy() // 1000)
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.training_set(secs, feats)
    assert exc.value.field == "spine.ts" and "seconds" in str(exc.value) and exc.value.status is None
    whole_seconds = base.assign(ts=(spine["T"] // 1000 * 1000).to_numpy())
    pd.testing.assert_frame_equal(client.training_set(secs, feats, ts_unit="s"), client.training_set(whole_seconds, feats).assign(ts=secs["ts"]))
    # Big spines go in several exchanges, rows in order.
    split = client.training_set(base, feats, max_rows_per_exchange=100, chunk_rows=33)
    pd.testing.assert_frame_equal(split, want)


# -- ingest -------------------------------------------------------------------------------

def user_counts(s: Server, user: str) -> dict:
    ent = rest_features(s, "user_features", [user], ["view_count", "cart_count", "purchase_count", "first_event_ts"])[0]
    return {f["name"]: f["value"] for f in ent["features"]}


def test_ingest_list_with_rejections(server):
    c = recsys.Client(server.url, server.flight_uri)
    events = [
        {"user_id": "a", "item_id": "i1", "behavior": "view", "ts": BASE},
        {"user_id": "", "item_id": "i1", "behavior": "view", "ts": BASE},                # 1: missing user
        {"user_id": "a", "item_id": "i2", "behavior": "click", "ts": BASE},              # 2: unknown behavior
        {"user_id": "a", "item_id": "i3", "behavior": "cart", "ts": dt.datetime(2026, 1, 1, 0, 0, 1)},  # naive = UTC
        {"user_id": "a", "item_id": "i4", "behavior": "buy", "ts": "2026-01-01T00:00:02.250Z", "category_id": None},
        {"user_id": "a", "item_id": "i5", "behavior": "view", "ts": BASE // 1000},       # 5: seconds, too old
        {"user_id": "a", "item_id": "i6", "behavior": "view", "ts": pd.Timestamp(BASE + 3000, unit="ms", tz="UTC"),
         "category_id": float("nan")},
        {"user_id": "a", "item_id": "i7", "behavior": "view", "ts": BASE, "colour": "red"},  # 7: unknown field
    ]
    res = c.ingest(events)
    assert res.accepted == 4 and res.rejected == 4, res
    assert [(r.index, r.field, r.code) for r in res.rejections] == [
        (1, "user_id", "missing"), (2, "behavior", "unknown_behavior"), (5, "ts", "too_old"), (7, "colour", "unknown_field")], res
    assert "click" in res.rejections[1].reason and "seconds" in res.rejections[2].reason
    assert res.rejected_by_code == {"missing": 1, "unknown_behavior": 1, "too_old": 1, "unknown_field": 1}
    assert c.wait_caught_up().events_applied == 4
    assert user_counts(server, "a") == {"view_count": 2, "cart_count": 1, "purchase_count": 1, "first_event_ts": BASE}
    dt_first = rest_features(server, "item_features", ["i3", "i4"], ["first_event_ts"])
    assert [e["features"][0]["value"] for e in dt_first] == [BASE + 1000, BASE + 2250]
    # A batch of invalid events only is reported the same way, not raised.
    bad = c.ingest([{"user_id": "b", "item_id": "", "behavior": "view", "ts": BASE}] * 3)
    assert (bad.accepted, bad.rejected, [r.index for r in bad.rejections]) == (0, 3, [0, 1, 2])
    assert {r.field for r in bad.rejections} == {"item_id"} and bad.rejected_by_code == {"missing": 3}
    assert c.ingest([]).accepted == 0
    # More invalid events than the server lists in one answer (100): all reported.
    many = c.ingest([{"user_id": f"m{i}", "item_id": "i1", "behavior": "click", "ts": BASE} for i in range(250)])
    assert (many.accepted, many.rejected, [r.index for r in many.rejections]) == (0, 250, list(range(250)))
    assert c.stats().log_end_offset == 4
    with pytest.raises(TypeError):
        c.ingest({"user_id": "a"})


def test_ingest_dataframe_in_batches_the_server_takes(server_factory):
    s = server_factory("--ingest.max-batch", "50", "--ingest.max-body-bytes", "6000")
    c = recsys.Client(s.url)
    n = 1234
    df = pd.DataFrame({
        "user_id": pd.array([f"du{i % 17}" for i in range(n)], dtype="string[pyarrow]"),  # large_string in Arrow
        "item_id": [i % 31 for i in range(n)],                                             # integer ids
        "category_id": pd.Categorical([f"k{i % 3}" for i in range(n)]),
        "behavior": [BEHAVIORS[i % 4] for i in range(n)],
        "ts": pd.to_datetime([BASE + i * SEC for i in range(n)], unit="ms", utc=True).tz_convert("America/New_York"),
    })
    df.loc[[7, 300, 999], "behavior"] = "click"
    df.loc[500:649, "user_id"] = ""  # 150 invalid in a row: three batches without a valid event
    res = c.ingest(df)
    assert c.max_batch == 50, "the client learns the server's batch limit"
    assert res.accepted == n - 153 and res.rejected == 153
    assert [r.index for r in res.rejections] == [7, 300] + list(range(500, 650)) + [999]
    assert {(r.field, r.code) for r in res.rejections} == {("behavior", "unknown_behavior"), ("user_id", "missing")}
    st = c.wait_caught_up()
    assert st.log_end_offset == st.events_applied == n - 153
    first = rest_features(s, "item_features", ["0"], ["first_event_ts", "view_count"])[0]["features"]
    assert first[0]["value"] == BASE  # the New York time zone did not shift the instant
    # Resending is harmless: accepted again, skipped as duplicates.
    again = c.ingest(df)
    assert again.accepted == res.accepted
    st = c.wait_caught_up()
    assert st.events_applied == n - 153 and st.duplicates_skipped == n - 153


# -- backfill -------------------------------------------------------------------------------

def test_backfill_parquet_with_progress(server, tmp_path, capsys):
    c = recsys.Client(server.url, server.flight_uri)
    n = 5000
    df = pd.DataFrame({
        "user_id": pd.array([f"bu{i % 40}" for i in range(n)], dtype="string[pyarrow]"),
        "item_id": [f"bi{i % 90}" for i in range(n)],
        "category_id": pd.Categorical(["c1"] * n),
        "behavior": (["view", "cart", "fav", "pv"] * (n // 4)),
        "ts": pd.to_datetime([BASE + i * SEC for i in range(n)], unit="ms").astype("datetime64[us]"),
    })
    df.loc[4321, "behavior"] = "click"
    path = tmp_path / "events.parquet"
    df.to_parquet(path, index=False)
    schema = pq.read_schema(path)
    assert schema.field("user_id").type in (pa.large_string(), pa.string())
    res = c.backfill(path, batch_rows=1000)
    assert (res.accepted, res.rejected, res.rejected_by_code) == (n - 1, 1, {"unknown_behavior": 1}), res
    assert [(r.index, r.field, r.code) for r in res.rejections] == [(4321, "behavior", "unknown_behavior")]
    err = capsys.readouterr().err
    assert "backfill" in err and f"{n}/{n}" in err and "rows" in err, err[-500:]
    st = c.wait_caught_up()
    assert st.events_applied == n - 1
    want = {"view_count": sum(1 for i in range(n) if i % 40 == 0 and i % 4 in (0, 3) and i != 4321),
            "cart_count": sum(1 for i in range(n) if i % 40 == 0 and i % 4 == 1), "purchase_count": 0,
            "first_event_ts": BASE}
    assert user_counts(server, "bu0") == want
    # A DataFrame, a pyarrow Table of large_strings, and a RecordBatchReader: the same
    # events again, deduplicated.
    table = pa.Table.from_pandas(df, preserve_index=False)
    large = table.cast(pa.schema([pa.field(f.name, pa.large_string() if pa.types.is_string(f.type) else f.type)
                                  for f in table.schema]))
    for src in (df, large, pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=700))):
        again = c.backfill(src, progress=False)
        assert (again.accepted, again.rejected) == (n - 1, 1)
    st = c.wait_caught_up()
    assert st.events_applied == n - 1 and st.duplicates_skipped == 3 * (n - 1)
    assert capsys.readouterr().err == ""  # progress=False prints nothing
    # Integer Unix seconds with ts_unit.
    secs = pd.DataFrame({"user_id": ["s1"], "item_id": ["si"], "behavior": ["view"], "ts": [BASE // 1000 + 60]})
    assert c.backfill(secs, ts_unit="s", progress=False).accepted == 1
    c.wait_caught_up()
    assert rest_features(server, "user_features", ["s1"], ["first_event_ts"])[0]["features"][0]["value"] == BASE + 60_000


# -- overload -------------------------------------------------------------------------------

def test_overload_is_resource_exhausted_and_retried(server_factory):
    s = server_factory("--limits.max-in-flight", "1")
    ids = [f"x{i}" for i in range(1000)]

    def burst(retries: int) -> list:
        out: list = []
        lock = threading.Lock()
        barrier = threading.Barrier(12)

        def one():
            c = recsys.Client(s.url, retries=retries)
            barrier.wait(30)
            try:
                for _ in range(3):
                    c.features("item_features", ids, ["view_count"])
                res = "ok"
            except recsys.RecsysError as exc:
                res = exc
            with lock:
                out.append(res)

        threads = [threading.Thread(target=one) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return out

    refused = [r for r in burst(retries=0) if r != "ok"]
    assert refused, "twelve concurrent clients on one slot: someone must be refused"
    for exc in refused:
        assert isinstance(exc, recsys.ResourceExhausted), repr(exc)
        assert exc.status == 429 and exc.retry_after is not None and exc.retry_after >= 1, repr(exc)
    assert burst(retries=10) == ["ok"] * 12, "with retries after Retry-After every call gets through"


# -- errors ---------------------------------------------------------------------------------

def test_errors_name_the_field_and_reason(loaded, client):
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.features("user_features", ["u01"], ["shoe_size"])
    e = exc.value
    assert (e.status, e.grpc_code, e.field) == (400, "INVALID_ARGUMENT", "features")
    assert "shoe_size" in e.message and e.violations and e.violations[0].field == "features", repr(e)
    assert "shoe_size" in str(e) and "HTTP 400" in str(e)
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.features("session_features", ["u01"])
    assert exc.value.field == "view" and "session_features" in exc.value.message
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.recommend("u01", k=5000)
    assert exc.value.field == "k" and exc.value.status == 400
    # Flight: unknown view NOT_FOUND; a bad column INVALID_ARGUMENT with the server's field violation.
    with pytest.raises(recsys.NotFound) as exc:
        client.scan("bogus_view")
    assert "bogus_view" in exc.value.message and exc.value.status is None and exc.value.grpc_code == "NOT_FOUND"
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.scan("user_features", ["view_count", "zzz_col"])
    assert exc.value.field == "columns" and "zzz_col" in exc.value.message
    assert [v.field for v in exc.value.violations] == ["columns"]
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.scan("category_features")
    assert exc.value.field == "ids"
    spine = pd.DataFrame({"user_id": ["u01"], "ts": [BASE + DAY]})
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.training_set(spine, ["zzz_feat"])
    assert exc.value.field == "features" and "zzz_feat" in exc.value.message
    with pytest.raises(recsys.NotFound) as exc:
        client.training_set(spine, views=["nope_view"])
    assert "nope_view" in exc.value.message
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.training_set(pd.DataFrame({"user_id": ["u01"], "label": [1]}))
    assert exc.value.field == "spine" and "ts" in exc.value.message
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.training_set(pd.DataFrame({"ts": [BASE]}))
    assert exc.value.field == "spine" and exc.value.status is None
    with pytest.raises(recsys.InvalidArgument) as exc:
        client.backfill(pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "behavior": ["view"], "ts": [BASE], "colour": ["red"]}),
                        progress=False)
    assert exc.value.field == "schema" and "colour" in exc.value.message
    with pytest.raises(recsys.FailedPrecondition) as exc:
        client._action("backup", {"dir": "x"})
    assert "--backup.dir" in exc.value.message
    # Nothing listens: Unavailable, for REST and for Flight.
    port = free_port()
    dead = recsys.Client(f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}", timeout=5)
    with pytest.raises(recsys.Unavailable):
        dead.stats()
    with pytest.raises(recsys.Unavailable):
        dead.scan("user_features")
    assert issubclass(recsys.Unavailable, recsys.RecsysError) and issubclass(recsys.NotFound, recsys.RecsysError)
    assert loaded.stats()["events_applied"] == len(EVENTS), "none of that changed the data"


TOKENS = {"read": "client-read-token-0123456789", "write": "client-write-token-0123456789",
          "admin": "client-admin-token-0123456789"}


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    d = tmp_path_factory.mktemp("client-auth")
    (d / "tokens.txt").write_text("".join(f"{t} {scope}\n" for scope, t in TOKENS.items()))
    s = Server(d, ["--auth.token-file", str(d / "tokens.txt"), "--ingest.allowed-lateness", "1h"], name="client-auth")
    try:
        s.start()
        s.session.headers["Authorization"] = f"Bearer {TOKENS['admin']}"  # for conftest's stats()
        yield s
    finally:
        s.close()


def test_auth_tokens_and_scopes(authed):
    s = authed
    ev = [{"user_id": "t1", "item_id": "ti", "behavior": "view", "ts": BASE + 10 * HOUR},
          {"user_id": "t1", "item_id": "late", "behavior": "view", "ts": BASE}]  # a dead letter (1 h lateness)
    frame = pd.DataFrame(ev[:1])
    for token, exc_type in ((None, recsys.Unauthenticated), ("wrong-token-0123456789", recsys.Unauthenticated)):
        c = recsys.Client(s.url, s.flight_uri, token=token)
        with pytest.raises(exc_type) as exc:
            c.stats()
        assert exc.value.status == 401 and exc.value.grpc_code == "UNAUTHENTICATED" and "token" in exc.value.message
        with pytest.raises(exc_type) as exc:
            c.ingest(ev)
        assert exc.value.status == 401
        with pytest.raises(exc_type) as exc:
            c.scan("user_features")
        assert exc.value.status is None and exc.value.grpc_code == "UNAUTHENTICATED"
        with pytest.raises(exc_type):
            c.backfill(frame, progress=False)
        assert c.health() and c.ready(), "health and readiness need no token"
    reader = recsys.Client(s.url, s.flight_uri, token=TOKENS["read"])
    with pytest.raises(recsys.PermissionDenied) as exc:
        reader.ingest(ev)
    assert exc.value.status == 403 and "write" in exc.value.message and exc.value.field == "authorization"
    with pytest.raises(recsys.PermissionDenied) as exc:
        reader.backfill(frame, progress=False)
    assert exc.value.grpc_code == "PERMISSION_DENIED" and "write" in exc.value.message
    with pytest.raises(recsys.PermissionDenied):
        reader.dead_letters()
    assert s.stats()["log_end_offset"] == 0, "refused writes wrote nothing"

    writer = recsys.Client(s.url, s.flight_uri, token=TOKENS["write"])
    res = writer.ingest(ev)
    assert res.accepted == 1 and [(r.index, r.code) for r in res.rejections] == [(1, "late")]
    assert writer.backfill(frame, progress=False).accepted == 1
    assert reader.wait_caught_up().events_applied == 1
    assert reader.features("user_features", ["t1"], ["view_count"])["view_count"].tolist() == [1]
    assert reader.scan("user_features", ["view_count"]).column("view_count").to_pylist() == [1]
    spine = pd.DataFrame({"user_id": ["t1"], "ts": [BASE + 11 * HOUR]})
    assert reader.training_set(spine, ["view_count_24h"])["user.view_count_24h"].tolist() == [1]
    admin = recsys.Client(s.url, s.flight_uri, token=TOKENS["admin"])
    dl = admin.dead_letters()
    assert dl[["code", "user_id", "item_id", "behavior"]].values.tolist() == [["late", "t1", "late", "view"]]
    assert py(dl["ts"].iloc[0]) == BASE and str(dl["ts"].dtype) == "datetime64[ms, UTC]"
    assert dl["received_at"].notna().all()
    assert admin.scan("dead_letters").column("item_id").to_pylist() == ["late"]


# -- TLS --------------------------------------------------------------------------------------

def tls_round_trip(c: recsys.Client) -> None:
    assert c.ingest([{"user_id": "tu", "item_id": "ti", "behavior": "view", "ts": BASE}]).accepted == 1
    c.wait_caught_up()
    assert c.features("user_features", ["tu"], ["view_count"])["view_count"].tolist() == [1]
    assert c.scan("user_features", ["view_count"]).column("user_id").to_pylist() == ["tu"]
    spine = pd.DataFrame({"user_id": ["tu"], "ts": [BASE + MIN]})
    assert c.training_set(spine, ["view_count_1h"])["user.view_count_1h"].tolist() == [1]
    assert c.backfill(pd.DataFrame({"user_id": ["tu"], "item_id": ["tj"], "behavior": ["cart"], "ts": [BASE + 1]}),
                      progress=False).accepted == 1


def test_tls_with_the_test_ca(tls_server_factory, pki):
    s = tls_server_factory()
    assert s.url.startswith("https://") and s.flight_uri.startswith("grpc+tls://")
    c = recsys.Client(s.url, tls=s.ca)  # a CA path; Flight on the default port would be guessed, so name it
    assert c.flight_url == "grpc+tls://127.0.0.1:8815"
    c = recsys.Client(s.url, s.flight_uri, tls=s.ca)
    tls_round_trip(c)
    # Without the test CA (the system roots), or with another CA: refused on both front doors.
    for tls in (True, recsys.TLS(ca_cert=pki / "rogue-ca.crt")):
        bad = recsys.Client(s.url, s.flight_uri, tls=tls, timeout=5)
        with pytest.raises(recsys.Unavailable) as exc:
            bad.stats()
        assert "TLS" in exc.value.message
        with pytest.raises(recsys.Unavailable):
            bad.scan("user_features")
    # verify=False skips the check (testing only).
    insecure = recsys.Client(s.url, s.flight_uri, tls=recsys.TLS(verify=False))
    with pytest.warns(InsecureRequestWarning):
        assert insecure.stats().log_end_offset == 2
    assert insecure.scan("user_features", ["view_count"]).num_rows == 1
    with pytest.raises(ValueError):
        recsys.Client(s.url.replace("https", "http"), tls=s.ca)


def test_mtls(tls_server_factory, pki):
    s = tls_server_factory(mtls=True)
    good = recsys.TLS(ca_cert=s.ca, client_cert=pki / "client.crt", client_key=pki / "client.key")
    tls_round_trip(recsys.Client(s.url, s.flight_uri, tls=good))
    for tls in (recsys.TLS(ca_cert=s.ca),
                recsys.TLS(ca_cert=s.ca, client_cert=pki / "rogue-client.crt", client_key=pki / "rogue-client.key")):
        c = recsys.Client(s.url, s.flight_uri, tls=tls, timeout=5)
        with pytest.raises(recsys.Unavailable):
            c.stats()
        with pytest.raises(recsys.Unavailable):
            c.scan("user_features")
    with pytest.raises(ValueError):
        recsys.TLS(ca_cert=s.ca, client_cert=pki / "client.crt")


# -- the client is what it says ----------------------------------------------------------------

def test_package_is_typed_and_documented():
    import importlib.resources
    assert importlib.resources.files("recsys").joinpath("py.typed").is_file()
    for name in ("ingest", "features", "recommend", "similar_items", "similar_users", "history", "popular", "scan",
                 "training_set", "backfill", "models", "stats", "health", "ready", "wait_caught_up"):
        fn = getattr(recsys.Client, name)
        assert fn.__doc__ and fn.__annotations__.get("return"), name
    assert re.match(r"\d+\.\d+\.\d+", recsys.__version__)
