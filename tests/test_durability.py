"""Crash safety: acknowledged events survive SIGKILL, and a replay that keeps
retrying through server crashes ends with every event counted exactly once."""

from __future__ import annotations

import re
import subprocess

from conftest import (COUNT_FEATURES, TAOBAO_HOT_ROWS, chunks, describe_mismatches, expected_view, flight_rows,
                      poll, read_taobao, recsys_bin, ServerError)

BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def synthetic_batch(prefix: str, n: int):
    """n distinct events over 7 users and 11 items; returns (events, per-user counts, per-item counts)."""
    behaviors = ["view", "cart", "fav", "purchase", "pv", "buy"]
    canon = {"pv": "view", "buy": "purchase"}
    events, users, items = [], {}, {}
    for i in range(n):
        u, it, b = f"{prefix}-u{i % 7}", f"{prefix}-i{i % 11}", behaviors[i % len(behaviors)]
        events.append({"user_id": u, "item_id": it, "category_id": f"{prefix}-c{i % 3}", "behavior": b, "ts": BASE_TS + i})
        name = canon.get(b, b) + "_count"
        for d, key in ((users, u), (items, it)):
            d.setdefault(key, dict.fromkeys(COUNT_FEATURES, 0))[name] += 1
    return events, users, items


def read_counts(server, view, ids):
    out = {}
    for batch in chunks(ids, 1000):
        r = server.post("/v1/features:get", json={"view": view, "ids": batch, "features": list(COUNT_FEATURES)})
        assert r.status_code == 200, r.text
        for e in r.json()["entities"]:
            out[e["id"]] = {f["name"]: f["value"] for f in e["features"]}
    return out


def test_acknowledged_batch_survives_sigkill(server_factory):
    s = server_factory()
    events, users, items = synthetic_batch("crash", 500)
    body = s.ingest(events)
    assert body == {"accepted": 500, "rejected": []}
    s.kill()  # immediately after the acknowledgement: no graceful flush
    s.start()
    st = s.wait_caught_up()
    assert st["log_end_offset"] == 500
    assert st["events_applied"] == 500
    assert st["users"] == len(users) and st["items"] == len(items)
    assert read_counts(s, "user_features", sorted(users)) == users
    assert read_counts(s, "item_features", sorted(items)) == items

    # The dedup memory survives the crash too: resending the batch (as a
    # client that never saw the answer would) must not count anything twice.
    s.kill()
    s.start()
    s.ingest(events)
    st = s.wait_caught_up()
    assert st["events_applied"] == 500
    assert st["duplicates_skipped"] == 500
    assert read_counts(s, "user_features", sorted(users)) == users

    # A graceful stop keeps everything as well.
    assert s.stop() == 0
    s.start()
    st = s.wait_caught_up()
    assert st["events_applied"] == 500
    assert read_counts(s, "item_features", sorted(items)) == items


def test_repeated_crashes_between_batches(server_factory):
    """Several acknowledged batches, each followed by a SIGKILL: none is lost."""
    s = server_factory()
    all_users: dict[str, dict] = {}
    total = 0
    for round_ in range(3):
        events, users, _ = synthetic_batch(f"r{round_}", 200 + round_)
        assert s.ingest(events)["accepted"] == len(events)
        total += len(events)
        all_users.update(users)
        s.kill()
        s.start()
    st = s.wait_caught_up()
    assert st["events_applied"] == total == st["log_end_offset"]
    assert read_counts(s, "user_features", sorted(all_users)) == all_users


def test_concurrent_identical_batches_counted_once(server, pb):
    """The same batch sent at once by several REST and gRPC clients is applied once."""
    import threading

    rounds, clients = 4, 6
    per_user: dict[str, dict] = {}
    for r in range(rounds):
        events, users, _ = synthetic_batch(f"conc{r}", 1500)
        for u, c in users.items():
            per_user[u] = c
        grpc_req = pb.m.IngestRequest(events=[pb.m.Event(**e) for e in events])
        stub = pb.g.EventServiceStub(server.channel())
        results, errors = [], []

        def send(n):
            try:
                if n % 2:
                    results.append(stub.Ingest(grpc_req, timeout=30).accepted)
                else:
                    import requests
                    resp = requests.post(server.url + "/v1/events", json={"events": events}, timeout=30)
                    results.append(resp.json()["accepted"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert results == [1500] * clients
    st = server.wait_caught_up()
    assert st["events_applied"] == rounds * 1500, st
    assert st["duplicates_skipped"] == rounds * 1500 * (clients - 1), st
    assert read_counts(server, "user_features", sorted(per_user)) == per_user


def _stats_or_none(server):
    try:
        return server.stats()
    except Exception:  # noqa: BLE001 - the server is down or restarting
        return None


PRELOADED = 4000


def test_replay_through_crashes_counts_every_event_once(server_factory, taobao_path, taobao_expected):
    s = server_factory()
    # Some events reach the server before the replay, over REST with the
    # canonical behavior names: the replay's copies of them are duplicates.
    rows = read_taobao(taobao_path)[:PRELOADED]
    pre = [{"user_id": u, "item_id": i, "category_id": c, "behavior": b, "ts": ts} for u, i, c, b, ts in rows]
    for batch in chunks(pre, 1000):
        assert s.ingest(batch) == {"accepted": len(batch), "rejected": []}
    replay_log = s.workdir / "replay.log"
    with open(replay_log, "wb") as out:
        proc = subprocess.Popen(
            [recsys_bin(), "replay", "--format", "taobao", "--progress", "off", "--target", s.url,
             "--batch", "2000", "--retry-for", "2m", str(taobao_path)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        kills = []
        for threshold in (PRELOADED + 30_000, PRELOADED + 70_000):
            def reached():
                if proc.poll() is not None:
                    return "replay done"
                if not s.running:
                    raise ServerError(f"server died on its own; log:\n{s.log_tail()}")
                st = _stats_or_none(s)
                return st if st and st["log_end_offset"] >= threshold else None
            state = poll(reached, 120, interval=0.01, what=f"log_end_offset >= {threshold}")
            if state == "replay done":
                break
            s.kill()
            kills.append(state["log_end_offset"])
            s.start()
        assert kills, "the replay finished before the first crash could be injected"
        try:
            rc = proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"replay did not finish; its output:\n{replay_log.read_text()}")
        out = replay_log.read_text()
        assert rc == 0, f"replay exited {rc}:\n{out}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    m = re.search(r"replay: (\d+) events read, (\d+) accepted, (\d+) rejected", out)
    assert m, out
    assert tuple(map(int, m.groups())) == (TAOBAO_HOT_ROWS, TAOBAO_HOT_ROWS, 0), out

    st = s.wait_caught_up()
    print(f"killed at log_end_offset {kills}; final stats {st}; replay: {out.strip()}")
    assert st["events_applied"] == TAOBAO_HOT_ROWS, (st, kills)
    assert st["users"] == len(taobao_expected.users)
    assert st["items"] == len(taobao_expected.items)
    # Every retried or preloaded event was either new or skipped as a duplicate.
    assert st["log_end_offset"] == st["events_applied"] + st["duplicates_skipped"], st
    assert st["duplicates_skipped"] >= PRELOADED, st

    for view in ("user_features", "item_features"):
        expected = expected_view(taobao_expected, view)
        _, _, rows = flight_rows(s, view)
        mm = [f"{view} {k}: got {rows.get(k)}, want {v}" for k, v in expected.items()
              if {c: (rows.get(k) or {}).get(c) for c in v} != v]
        mm += [f"{view}: unexpected id {k}" for k in set(rows) - set(expected)]
        assert not mm, describe_mismatches(mm, len(expected), view) + f" (killed at log_end {kills})"

    # A last crash after everything is applied loses nothing either.
    s.kill()
    s.start()
    st2 = s.wait_caught_up()
    assert st2["events_applied"] == TAOBAO_HOT_ROWS and st2["log_end_offset"] == st["log_end_offset"]
