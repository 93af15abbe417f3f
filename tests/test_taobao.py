"""Replay the real Taobao sample into a fresh server and check every feature of
every user and item against values computed independently from the CSV, over
REST, gRPC and Arrow Flight."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from conftest import (COUNT_FEATURES, ITEM_FEATURES, TAOBAO_HOT_ROWS, USER_FEATURES, Server, chunks,
                      describe_mismatches, expected_recent, expected_view, flight_rows, pb_value,
                      run_replay_target)

BATCH = 1000


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, taobao_path, taobao_expected):
    s = Server(tmp_path_factory.mktemp("taobao"), name="taobao-server")
    try:
        s.start()
        replay = run_replay_target(s.url, taobao_path)
        assert replay.returncode == 0, f"replay failed ({replay.returncode}):\n{replay.stdout}\n{replay.stderr}"
        s.wait_caught_up(min_log_end=TAOBAO_HOT_ROWS)
        yield s, replay
    finally:
        s.close()


def recent_expectations(expected):
    """{user: (recent_items, recent_categories)} for users whose lists are unambiguous."""
    out = {}
    for user, events in expected.user_events.items():
        items, ok_items = expected_recent(events, 1)
        cats, ok_cats = expected_recent(events, 2)
        if ok_items and ok_cats:
            out[user] = (items, cats)
    return out


@pytest.fixture(scope="module")
def recents(taobao_expected):
    r = recent_expectations(taobao_expected)
    # The check must cover users with real histories, not only one-event users.
    assert sum(1 for items, _ in r.values() if len(items) >= 5) >= 100
    return r


def compare(view, actual: dict[str, dict], expected: dict[str, dict], recents=None, expected_all=None):
    """Compares {id: {feature: value}}; returns a list of mismatch descriptions."""
    mismatches = []
    for key, exp in expected.items():
        got = actual.get(key)
        if got is None:
            mismatches.append(f"{view} {key}: missing")
            continue
        for name, value in exp.items():
            g = got.get(name)
            if isinstance(value, int) and isinstance(g, float) and g.is_integer():
                g = int(g)
            if g != value:
                mismatches.append(f"{view} {key}.{name}: got {g!r}, want {value!r}")
        if view == "user_features" and expected_all is not None:
            items = got.get("recent_items") or []
            cats = got.get("recent_categories") or []
            # Every user of the sample has at most 20 events, so the lists hold
            # all its distinct items and categories whatever the tie order.
            events = expected_all.user_events[key]
            if sorted(items) != sorted({e[1] for e in events}):
                mismatches.append(f"{view} {key}.recent_items: got {items}, want the items {sorted({e[1] for e in events})}")
            if sorted(cats) != sorted({e[2] for e in events}):
                mismatches.append(f"{view} {key}.recent_categories: got {cats}, want the categories {sorted({e[2] for e in events})}")
            if recents is not None and key in recents:
                want_items, want_cats = recents[key]
                if items != want_items:
                    mismatches.append(f"{view} {key}.recent_items: got {items}, want {want_items}")
                if cats != want_cats:
                    mismatches.append(f"{view} {key}.recent_categories: got {cats}, want {want_cats}")
    extra = set(actual) - set(expected)
    if extra:
        mismatches.append(f"{view}: unexpected ids {sorted(extra)[:10]}")
    return mismatches


def test_replay_summary(loaded):
    _, replay = loaded
    out = replay.stdout + replay.stderr
    m = re.search(r"replay: (\d+) events read, (\d+) accepted, (\d+) rejected in ", out)
    assert m, f"no summary line in replay output:\n{out}"
    assert tuple(map(int, m.groups())) == (TAOBAO_HOT_ROWS, TAOBAO_HOT_ROWS, 0), out


def test_stats(loaded, taobao_expected):
    s, _ = loaded
    st = s.stats()
    assert st["log_end_offset"] == TAOBAO_HOT_ROWS
    assert st["applied_offset"] == TAOBAO_HOT_ROWS
    assert st["events_applied"] == TAOBAO_HOT_ROWS
    assert st["duplicates_skipped"] == 0
    assert st["users"] == len(taobao_expected.users)
    assert st["items"] == len(taobao_expected.items)


@pytest.mark.parametrize("view", ["user_features", "item_features"])
def test_rest_features_match_csv(loaded, taobao_expected, recents, view):
    s, _ = loaded
    expected = expected_view(taobao_expected, view)
    names = USER_FEATURES if view == "user_features" else ITEM_FEATURES
    actual = {}
    for ids in chunks(sorted(expected), BATCH):
        r = s.post("/v1/features:get", json={"view": view, "ids": ids, "features": list(names)})
        assert r.status_code == 200, r.text[:2000]
        body = r.json()
        assert body["view"] == view
        assert [e["id"] for e in body["entities"]] == ids, "entities not in request order"
        for e in body["entities"]:
            feats = e["features"]
            assert [f["name"] for f in feats] == list(names), feats
            for f in feats:
                assert f["status"] == "present", (e["id"], f)
            actual[e["id"]] = {f["name"]: f["value"] for f in feats}
    mm = compare(view, actual, expected, recents, taobao_expected)
    assert not mm, describe_mismatches(mm, len(expected), view)


@pytest.mark.parametrize("view", ["user_features", "item_features"])
def test_grpc_features_match_csv(loaded, taobao_expected, recents, pb, view):
    s, _ = loaded
    stub = pb.g.FeatureServiceStub(s.channel())
    expected = expected_view(taobao_expected, view)
    actual = {}
    for ids in chunks(sorted(expected), BATCH):
        resp = stub.GetFeatures(pb.m.GetFeaturesRequest(view=view, ids=ids, features=list(USER_FEATURES if view == "user_features" else ITEM_FEATURES)), timeout=30)
        assert resp.view == view
        assert [e.id for e in resp.entities] == ids, "entities not in request order"
        for e in resp.entities:
            for f in e.features:
                assert f.status == "present", (e.id, f)
            actual[e.id] = {f.name: pb_value(f.value) for f in e.features}
    mm = compare(view, actual, expected, recents, taobao_expected)
    assert not mm, describe_mismatches(mm, len(expected), view)


EXPECTED_SCHEMA = {
    "user_features": [("user_id", pa.string())] + [(c, pa.int64()) for c in COUNT_FEATURES]
    + [("first_event_ts", pa.timestamp("ms", tz="UTC")), ("last_event_ts", pa.timestamp("ms", tz="UTC")),
       ("recent_items", pa.list_(pa.string())), ("recent_categories", pa.list_(pa.string()))],
    "item_features": [("item_id", pa.string())] + [(c, pa.int64()) for c in COUNT_FEATURES]
    + [("first_event_ts", pa.timestamp("ms", tz="UTC")), ("last_event_ts", pa.timestamp("ms", tz="UTC")),
       ("category_id", pa.string())],
}


def _schema_pairs(schema):
    return [(f.name, f.type) for f in schema]


@pytest.mark.parametrize("view", ["user_features", "item_features"])
def test_flight_full_scan_matches_csv(loaded, taobao_expected, recents, view):
    s, _ = loaded
    expected = expected_view(taobao_expected, view)
    names = list(USER_FEATURES if view == "user_features" else ITEM_FEATURES)
    info, table, rows = flight_rows(s, view, columns=names)
    assert _schema_pairs(table.schema) == EXPECTED_SCHEMA[view]
    assert _schema_pairs(info.schema) == EXPECTED_SCHEMA[view]
    assert info.total_records == len(expected)
    assert table.num_rows == len(expected)
    for name in table.column_names[:1] + [c for c in COUNT_FEATURES]:
        assert table.column(name).null_count == 0, f"{view}.{name} has nulls"
    mm = compare(view, rows, expected, recents, taobao_expected)
    assert not mm, describe_mismatches(mm, len(expected), view)


def test_flight_list_flights(loaded, taobao_expected):
    s, _ = loaded
    client = s.flight()
    try:
        flights = {tuple(p.decode() for p in f.descriptor.path): f for f in client.list_flights()}
        assert set(flights) == {("user_features",), ("item_features",), ("dead_letters",), ("item_neighbors",),
                                ("user_factors",), ("item_factors",), ("ranker_weights",)}
        assert flights[("user_features",)].total_records == len(taobao_expected.users)
        assert flights[("item_features",)].total_records == len(taobao_expected.items)
        import pyarrow.flight as fl
        for view in ("user_features", "item_features"):
            # The lifetime features come first, then the window features.
            n = len(EXPECTED_SCHEMA[view])
            assert _schema_pairs(flights[(view,)].schema)[:n] == EXPECTED_SCHEMA[view]
            assert _schema_pairs(client.get_schema(fl.FlightDescriptor.for_path(view)).schema)[:n] == EXPECTED_SCHEMA[view]
    finally:
        client.close()


def test_single_entity_endpoints(loaded, taobao_expected, pb):
    """GET /v1/users/{id}/features and /v1/items/{id}/features and the gRPC
    single-entity calls agree with the CSV for a sample of busy entities."""
    s, _ = loaded
    users = sorted(taobao_expected.users, key=lambda u: (-len(taobao_expected.user_events[u]), u))[:20]
    items = sorted(taobao_expected.items, key=lambda i: (-sum(taobao_expected.items[i].as_dict()[c] for c in COUNT_FEATURES), i))[:20]
    exp_users, exp_items = expected_view(taobao_expected, "user_features"), expected_view(taobao_expected, "item_features")
    stub = pb.g.FeatureServiceStub(s.channel())
    mm = []
    for u in users:
        r = s.get(f"/v1/users/{u}/features", params={"features": list(USER_FEATURES)})
        assert r.status_code == 200, r.text
        assert r.json()["id"] == u
        rest = {f["name"]: f["value"] for f in r.json()["features"]}
        grpc_ = {f.name: pb_value(f.value) for f in stub.GetUserFeatures(pb.m.GetUserFeaturesRequest(user_id=u), timeout=10).features}
        mm += compare("user_features(rest)", {u: rest}, {u: exp_users[u]})
        mm += compare("user_features(grpc)", {u: grpc_}, {u: exp_users[u]})
        # event_time of the last_event_ts feature is the newest event time.
        lt = next(f for f in r.json()["features"] if f["name"] == "last_event_ts")
        assert lt["event_time"] is not None
    for i in items:
        r = s.get(f"/v1/items/{i}/features", params={"features": list(ITEM_FEATURES)})
        assert r.status_code == 200, r.text
        rest = {f["name"]: f["value"] for f in r.json()["features"]}
        grpc_ = {f.name: pb_value(f.value) for f in stub.GetItemFeatures(pb.m.GetItemFeaturesRequest(item_id=i), timeout=10).features}
        mm += compare("item_features(rest)", {i: rest}, {i: exp_items[i]})
        mm += compare("item_features(grpc)", {i: grpc_}, {i: exp_items[i]})
    assert not mm, describe_mismatches(mm, 80, "entity reads")


def test_popular_items_follow_the_data(loaded, taobao_expected):
    """The popular list is sorted by score and only names items of the data."""
    s, _ = loaded
    r = s.get("/v1/items/popular", params={"k": 50})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 50
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    assert all(it["item_id"] in taobao_expected.items for it in items)
    assert len({it["item_id"] for it in items}) == 50
