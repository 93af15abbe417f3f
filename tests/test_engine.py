"""The event-time engine end to end: declared views, windows on the Taobao
replay, the watermark and dead letters."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import pytest

from conftest import Server, read_taobao, run_replay_target

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def taobao_server(tmp_path_factory, taobao_path):
    s = Server(tmp_path_factory.mktemp("engine"), name="engine-taobao")
    s.start()
    res = run_replay_target(s.url, taobao_path)
    assert res.returncode == 0, res.stdout + res.stderr
    s.wait_caught_up()
    yield s
    s.close()


def test_hourly_hot_items_match_csv(taobao_server, taobao_path):
    """Top 10 items by views in each whole hour of the replay, from the API,
    equal the same computed from the CSV (ties broken by item id)."""
    rows = read_taobao(taobao_path)
    views = defaultdict(Counter)
    for _user, item, _cat, behavior, ts_ms in rows:
        if behavior == "view":
            views[ts_ms // HOUR_MS * HOUR_MS][item] += 1
    assert len(views) >= 2
    for hour, counts in sorted(views.items()):
        want = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        r = taobao_server.get("/v1/items/popular", params={"k": 10, "window": "1h", "by": "view", "as_of": hour + HOUR_MS - 1})
        assert r.status_code == 200, r.text
        got = [(it["item_id"], it["score"]) for it in r.json()["items"]]
        assert got == [(i, float(n)) for i, n in want], f"hour {hour}"


def test_window_counts_on_replay(taobao_server, taobao_path):
    """view_count_1h of the busiest items as of the end of the replay equals
    the views in the resolved window [floor_5m(now - 1h + 1), now]."""
    rows = read_taobao(taobao_path)
    now = max(r[4] for r in rows)
    lo = (now - HOUR_MS + 1) // 300_000 * 300_000
    counts = Counter(item for _u, item, _c, b, ts in rows if b == "view" and lo <= ts <= now)
    busiest = [i for i, _ in counts.most_common(50)]
    r = taobao_server.post("/v1/features:get", json={"view": "item_features", "ids": busiest, "features": ["view_count_1h"]})
    assert r.status_code == 200, r.text
    got = {e["id"]: e["features"][0]["value"] for e in r.json()["entities"]}
    assert got == {i: counts[i] for i in busiest}
    # distinct_users_24h: HyperLogLog over whole hours, within 10%.
    hour_lo = (now - 24 * HOUR_MS + 1) // HOUR_MS * HOUR_MS
    users = defaultdict(set)
    for u, item, _c, _b, ts in rows:
        if hour_lo <= ts:
            users[item].add(u)
    r = taobao_server.post("/v1/features:get", json={"view": "item_features", "ids": busiest, "features": ["distinct_users_24h"]})
    assert r.status_code == 200, r.text
    for e in r.json()["entities"]:
        est, exact = e["features"][0]["value"], len(users[e["id"]])
        assert abs(est - exact) <= max(1, 0.1 * exact), (e["id"], est, exact)
    # As of one hour earlier, the same rule.
    asof = now - HOUR_MS
    lo = (asof - HOUR_MS + 1) // 300_000 * 300_000
    counts = Counter(item for _u, item, _c, b, ts in rows if b == "view" and lo <= ts <= asof)
    r = taobao_server.post("/v1/features:get", json={"view": "item_features", "ids": busiest, "features": ["view_count_1h", "view_count"], "as_of": asof})
    assert r.status_code == 200, r.text
    for e in r.json()["entities"]:
        w, life = e["features"]
        assert w["value"] == counts[e["id"]], e
        assert life["status"] == "not_versioned", e


def test_feature_views_listed(server):
    r = server.get("/v1/feature-views")
    assert r.status_code == 200, r.text
    views = {v["name"]: v for v in r.json()["views"]}
    assert {"user_features", "item_features", "category_features"} <= set(views)
    feats = {f["name"]: f for f in views["user_features"]["features"]}
    for beh in ("view", "cart", "fav", "purchase"):
        for win in ("1h", "24h", "7d"):
            f = feats[f"{beh}_count_{win}"]
            assert (f["type"], f["aggregation"], f["window"], f["versioned"]) == ("int64", "count", win, True), f
    assert feats["recent_items"]["versioned"] is False
    assert views["item_features"]["id_column"] == "item_id"


def test_bad_definitions_stop_startup(server_factory, tmp_path):
    bad = tmp_path / "features.yaml"
    bad.write_text("views:\n  - name: v\n    entity: user\n    features:\n      - {name: x, agg: count, behavior: view, window: 7m}\n")
    s = server_factory("--features", str(bad), start=False)
    proc = __import__("subprocess").run(s.args(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert f"{bad}:5:" in proc.stderr and "multiple of 5m" in proc.stderr, proc.stderr


def test_late_events_are_dead_letters(server_factory):
    s = server_factory("--ingest.allowed-lateness", "1h")
    now = int(time.time() * 1000)
    ok = s.ingest([{"user_id": "u", "item_id": "i", "behavior": "view", "ts": now}])
    assert ok["accepted"] == 1
    r = s.post("/v1/events", json={"events": [
        {"user_id": "u", "item_id": "late", "behavior": "view", "ts": now - 2 * HOUR_MS},
        {"user_id": "u", "item_id": "fine", "behavior": "view", "ts": now - HOUR_MS // 2},
    ]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert [(x["index"], x["field"], x["code"]) for x in body["rejected"]] == [(0, "ts", "late")]
    assert "watermark" in body["rejected"][0]["reason"]
    d = s.get("/v1/dead-letters").json()
    assert d["total"] == "1" or d["total"] == 1
    assert d["dead_letters"][0]["code"] == "late" and d["dead_letters"][0]["event"]["item_id"] == "late"
    stats = s.stats()
    assert stats["dead_letters"] == 1 and stats["watermark"] == now - HOUR_MS
    import pyarrow.flight as fl
    client = s.flight()
    try:
        info = client.get_flight_info(fl.FlightDescriptor.for_path("dead_letters"))
        table = client.do_get(info.endpoints[0].ticket).read_all()
    finally:
        client.close()
    assert table.column("item_id").to_pylist() == ["late"] and table.column("code").to_pylist() == ["late"]
