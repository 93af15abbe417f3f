"""Quality of the answers end to end: `exclude_seen` drops every item the
user touched (not only the newest ones the models keep), over REST and gRPC
and across a restart."""

from __future__ import annotations

import pytest

from conftest import Server, chunks

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

