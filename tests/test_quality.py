"""Quality of the answers end to end: `exclude_seen` drops every item the
user touched (not only the newest ones the models keep), over REST and gRPC
and across a restart; event times from 1971 on pass every way in (REST,
gRPC, Flight DoPut, replay, eval), and seconds sent for milliseconds are
refused with a message that says so."""

from __future__ import annotations

import json
import subprocess

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from conftest import Server, chunks, recsys_bin, run_replay_target

BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HEAVY = "qs-heavy"
TOUCHED = [f"qs-h{i}" for i in range(70)]  # more than the model history (50) and the recent items (20)
OTHERS = [f"qs-o{j}" for j in range(40)]  # never touched by HEAVY
# HEAVY's items newest first: it touches TOUCHED in order, then the first two again.
RECENCY = TOUCHED[1::-1] + TOUCHED[:1:-1]


def ev(user: str, item: str, behavior: str, ts: int, category: str | None = None) -> dict:
    e = {"user_id": user, "item_id": item, "behavior": behavior, "ts": ts}
    if category:
        e["category_id"] = category
    return e


def cat(item: str) -> str:
    return f"qs-c{int(item[4:]) % 5}"


def seen_stream() -> list[dict]:
    events = []
    t = BASE_TS
    # Neighbours: 30 users each view a run of touched items and of other
    # items, so that both have co-occurrences, similar users and popularity;
    # the oldest touched items are the most popular.
    for u in range(30):
        for n in range(6):
            item = TOUCHED[(u * 2 + n) % 30]
            events.append(ev(f"qs-n{u}", item, "view", t, cat(item)))
            t += 1000
            other = OTHERS[(u + 5 * n) % len(OTHERS)]
            events.append(ev(f"qs-n{u}", other, "cart" if n == 5 else "view", t, cat(other)))
            t += 1000
    # The heavy user touches every item of TOUCHED once, oldest first, then
    # goes back to two of the oldest (a repeated touch moves an item up).
    for item in TOUCHED:
        events.append(ev(HEAVY, item, "view", t, cat(item)))
        t += 1000
    for item in TOUCHED[:2]:
        events.append(ev(HEAVY, item, "fav", t, cat(item)))
        t += 1000
    # More neighbour activity after the heavy user, so the touched items stay
    # popular and trending.
    for u in range(30):
        item = TOUCHED[u % 30]
        events.append(ev(f"qs-late{u}", item, "view", t, cat(item)))
        events.append(ev(f"qs-late{u}", OTHERS[u % len(OTHERS)], "view", t + 1, cat(OTHERS[u % len(OTHERS)])))
        t += 1000
    return events


@pytest.fixture(scope="module")
def seen_srv(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("quality"), name="quality-server")
    try:
        s.start()
        events = seen_stream()
        for batch in chunks(events, 200):
            assert s.ingest(batch)["accepted"] == len(batch)
        assert s.wait_caught_up()["events_applied"] == len(events)
        yield s
    finally:
        s.close()


def rec_ids(s, user: str, **params) -> list[str]:
    r = s.get(f"/v1/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    ids = [it["item_id"] for it in r.json()["items"]]
    assert len(ids) == len(set(ids)), ids
    return ids


def test_exclude_seen_drops_every_touched_item(seen_srv):
    # Without the flag the oldest touched items are recommended (they are
    # the most popular), so the filter has something to do.
    everything = rec_ids(seen_srv, HEAVY, k=50)
    assert set(TOUCHED[2:30]) & set(everything), everything
    ids = rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true")
    leaked = [it for it in ids if it in TOUCHED]
    assert not leaked, f"exclude_seen returned touched items {leaked} at recency positions {[RECENCY.index(it) for it in leaked]}"
    # Never short while untouched items exist: every one of them comes back.
    assert set(ids) == set(OTHERS), sorted(set(OTHERS) - set(ids))


def test_exclude_seen_with_exclude_and_category(seen_srv):
    ids = rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true", exclude=",".join(OTHERS[:5]))
    assert not set(ids) & (set(TOUCHED) | set(OTHERS[:5])), ids
    assert set(ids) == set(OTHERS[5:])
    ids = rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true", category="qs-c0")
    assert ids and not set(ids) & set(TOUCHED), ids
    assert set(ids) == {o for o in OTHERS if cat(o) == "qs-c0"}


def test_exclude_seen_over_grpc(seen_srv, pb):
    stub = pb.g.RecommendServiceStub(seen_srv.channel())
    resp = stub.Recommend(pb.m.RecommendRequest(user_id=HEAVY, k=50, exclude_seen=True), timeout=10)
    ids = [i.item_id for i in resp.items]
    assert not set(ids) & set(TOUCHED), ids
    assert ids == rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true")


def test_exclude_seen_survives_restart(seen_srv):
    before = rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true")
    seen_srv.restart(graceful=True)
    after = rec_ids(seen_srv, HEAVY, k=50, exclude_seen="true")
    assert not set(after) & set(TOUCHED), after
    assert set(after) == set(before)


# -- event times from 1971 on --------------------------------------------------

T1975 = 157_766_400_000  # 1975-01-01T00:00:00Z
T1976 = 189_302_400_000  # 1976-01-01T00:00:00Z
T1985 = 473_385_600_000  # 1985-01-01T00:00:00Z
S1995 = 788_918_400  # 1995-01-01T00:00:00Z, in seconds (the Taobao format)
SECONDS_MESSAGE = "is before 1971-01-01 (Unix milliseconds expected, not seconds)"


def user_values(s, user: str, *names: str) -> dict:
    r = s.get(f"/v1/users/{user}/features", params={"features": list(names)})
    assert r.status_code == 200, r.text
    return {f["name"]: f["value"] for f in r.json()["features"]}


def test_old_event_times_accepted_everywhere(server_factory, pb, tmp_path):
    """1970s to 1990s times pass REST, gRPC, Flight DoPut, replay and eval.

    One fresh server, fed in time order (the watermark rejects what is older
    than the newest event by more than the allowed lateness)."""
    s = server_factory()
    # Each is read back at once: on the event clock, the next one makes the
    # previous ones decades old (the test views' TTL is 10 years).
    # REST: Unix ms and RFC 3339.
    body = s.ingest([ev("old-rest", "old-i1", "view", T1975), ev("old-rest", "old-i2", "cart", "1975-06-01T00:00:00Z")])
    assert body == {"accepted": 2, "rejected": []}, body
    s.wait_caught_up()
    assert user_values(s, "old-rest", "view_count", "cart_count", "first_event_ts", "last_event_ts") == {
        "view_count": 1, "cart_count": 1, "first_event_ts": T1975, "last_event_ts": T1975 + 151 * 86_400_000}
    # gRPC.
    stub = pb.g.EventServiceStub(s.channel())
    resp = stub.Ingest(pb.m.IngestRequest(events=[pb.m.Event(user_id="old-grpc", item_id="old-i1", behavior="purchase", ts=T1976)]),
                       timeout=10)
    assert resp.accepted == 1 and not resp.rejected, resp
    s.wait_caught_up()
    assert user_values(s, "old-grpc", "purchase_count", "last_event_ts") == {"purchase_count": 1, "last_event_ts": T1976}
    # Flight DoPut backfill, as timestamps.
    table = pa.table({"user_id": ["old-put"] * 3, "item_id": ["old-i1", "old-i2", "old-i3"], "behavior": ["view"] * 3,
                      "ts": pa.array([T1985, T1985 + 1000, T1985 + 2000], type=pa.timestamp("ms", tz="UTC"))})
    client = fl.connect(s.flight_uri)
    try:
        writer, meta = client.do_put(fl.FlightDescriptor.for_path("events"), table.schema)
        writer.write_table(table)
        writer.done_writing()
        res = json.loads(meta.read().to_pybytes())
        writer.close()
    finally:
        client.close()
    assert res["accepted"] == 3 and res["rejected"] == 0, res
    s.wait_caught_up()
    assert user_values(s, "old-put", "view_count", "first_event_ts") == {"view_count": 3, "first_event_ts": T1985}
    # A Taobao-format file (Unix seconds) of the 1990s, replayed.
    path = tmp_path / "nineties.csv"
    rows = [(f"old-rep{u}", f"old-r{(3 * u + n) % 40}", f"oc{u % 3}", ("pv", "cart", "fav", "buy")[n % 4], S1995 + 3600 * (u * 10 + n))
            for u in range(20) for n in range(6)]
    rows.sort(key=lambda r: r[4])
    path.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    rep = run_replay_target(s.url, path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert f"{len(rows)} accepted, 0 rejected" in rep.stdout, rep.stdout
    st = s.wait_caught_up()
    assert st["events_applied"] == 2 + 1 + 3 + len(rows), st
    mine = [r for r in rows if r[0] == "old-rep3"]
    assert user_values(s, "old-rep3", "first_event_ts", "last_event_ts") == {
        "first_event_ts": mine[0][4] * 1000, "last_event_ts": mine[-1][4] * 1000}
    r = s.get("/v1/users/old-rep3/recommendations", params={"k": 5, "exclude_seen": "true"})
    assert r.status_code == 200 and len(r.json()["items"]) == 5, r.text
    assert not {it["item_id"] for it in r.json()["items"]} & {row[1] for row in mine}, r.text

    # recsys eval over the same file: every row read, none rejected.
    res = subprocess.run([recsys_bin(), "eval", "--format", "taobao", str(path), "--bootstrap", "10", "--json",
                          "--methods", "recent,item2item,full"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["rejected"] == 0 and out["events"] == len(rows), {k: out[k] for k in ("events", "rejected")}
    assert out["warmup_end"].startswith("199"), out["warmup_end"]


@pytest.mark.parametrize("ts,what", [
    (13_046_400_000, "1970-06-01 in ms"),
    (31_535_999_999, "the last ms of 1970"),
    ("1970-12-31T23:59:59Z", "1970 as RFC 3339"),
    (1_700_000_000, "2023 in seconds"),
    (29_348_006_400, "2900 in seconds"),
])
def test_times_before_1971_rejected(server_factory, ts, what):
    s = server_factory()
    r = s.post("/v1/events", json={"events": [ev("old-bad", "i", "view", ts)]})
    assert r.status_code == 400, (what, r.status_code, r.text)
    body = r.json()
    assert body["message"].startswith("events[0].ts: ") and SECONDS_MESSAGE in body["message"], (what, body)
    # With a valid event beside it: the rejection has the stable code too.
    body = s.ingest([ev("old-ok", "i", "view", T1975), ev("old-bad", "i", "view", ts)])
    assert body["accepted"] == 1 and [(x["index"], x["field"], x["code"]) for x in body["rejected"]] == [(1, "ts", "too_old")], body
    assert SECONDS_MESSAGE in body["rejected"][0]["reason"], body
