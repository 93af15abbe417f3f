"""The materialized window state of online reads, through the real binary:
a server with it (the default) and one without (--state.window-cache-mb 0,
every window read from the tiles) get the same events batch by batch and
answer every features:get alike, and /metrics shows the state being
built, hit and updated."""

from __future__ import annotations

import random

from conftest import Server

BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000


def events(rng: random.Random, n: int, start: int) -> list[dict]:
    """n events over about 3 hours from start, a few minutes out of order."""
    out = []
    for i in range(n):
        ts = start + i * 10_000 + rng.randrange(-5 * MINUTE, 5 * MINUTE)
        out.append({"event_id": f"w{start}-{i}", "user_id": f"u{rng.randrange(8)}", "item_id": f"i{rng.randrange(25)}",
                    "category_id": f"c{rng.randrange(3)}", "behavior": rng.choice(["view"] * 6 + ["cart", "fav", "purchase"]),
                    "ts": ts})
    return out


def metrics(s: Server) -> dict[str, float]:
    out = {}
    for line in s.get("/metrics").text.splitlines():
        if line.startswith("recsys_window_state_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_window_state_answers_as_the_tiles(server_factory):
    cached = server_factory("--clock", "event", name="cached")
    tiles = server_factory("--clock", "event", "--state.window-cache-mb", "0", name="tiles")
    rng = random.Random(11)
    evs = events(rng, 1200, BASE_TS)
    users = sorted({e["user_id"] for e in evs})
    items = sorted({e["item_id"] for e in evs})
    compared = 0
    for lo in range(0, len(evs), 150):
        batch = evs[lo:lo + 150]
        for s in (cached, tiles):
            assert s.ingest(batch)["accepted"] == len(batch)
            s.wait_caught_up()
        for view, ids in (("user_features", users), ("item_features", items)):
            for _ in range(2):  # the first read may build the state, the second reads it
                body = {"view": view, "ids": ids}
                a = cached.post("/v1/features:get", json=body).json()
                b = tiles.post("/v1/features:get", json=body).json()
                assert a == b, (view, lo)
                compared += len(ids)
    m = metrics(cached)
    assert m["recsys_window_state_entities"] == len(users) + len(items), m
    assert m["recsys_window_state_bytes"] > 0, m
    assert m["recsys_window_state_hits_total"] >= compared / 2, (m, compared)
    assert m["recsys_window_state_updates_total"] > 0, m
    off = metrics(tiles)
    assert off["recsys_window_state_entities"] == 0 and off["recsys_window_state_hits_total"] == 0, off
