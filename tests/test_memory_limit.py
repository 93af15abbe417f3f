"""--state.memory-limit through the real binary: a server under a limit
answers features and recommendations exactly as one without (its caches
only evict what Pebble holds), logs how it shared the limit out, and a
limit it cannot meet, or one it cannot read, is refused naming the flag."""

from __future__ import annotations

import random
import re

from conftest import Server
from test_cli import run, printed
from test_window_state import BASE_TS, events


def test_limited_server_answers_as_an_unlimited_one(server_factory):
    free = server_factory("--clock", "event", name="free")
    limited = server_factory("--clock", "event", "--state.memory-limit", "300MiB", name="limited")
    log = limited.log_path.read_text()
    assert '"msg":"memory limit"' in log or "msg=\"memory limit\"" in log, log[-2000:]
    rng = random.Random(5)
    evs = events(rng, 900, BASE_TS)
    users = sorted({e["user_id"] for e in evs})
    items = sorted({e["item_id"] for e in evs})
    for lo in range(0, len(evs), 300):
        batch = evs[lo:lo + 300]
        for s in (free, limited):
            assert s.ingest(batch)["accepted"] == len(batch)
            s.wait_caught_up()
        for view, ids in (("user_features", users), ("item_features", items)):
            body = {"view": view, "ids": ids}
            a = free.post("/v1/features:get", json=body).json()
            b = limited.post("/v1/features:get", json=body).json()
            assert a == b, (view, lo)
        for u in users[:4]:
            a = free.get(f"/v1/users/{u}/recommendations?k=10").json()
            b = limited.get(f"/v1/users/{u}/recommendations?k=10").json()
            assert a == b, u
    # /metrics: each record cache's entries, and its bytes under the limit
    # alone (without one nothing is weighed).
    for s in (free, limited):
        m = cache_metrics(s)
        for cache, n in (("store_users", len(users)), ("store_items", len(items)), ("model_users", len(users)), ("model_items", len(items))):
            assert m["entries", cache] == n, (s.name, cache, m)
            assert (m["bytes", cache] > 0) == (s is limited), (s.name, cache, m)
        assert m["entries", "model_neighbors"] > 0, m
        # Lookups by result: the writer looked every user up at least
        # once; the recommendations of the same 4 users after each batch
        # found their models cached (the publication replaces them).
        assert m["hit", "store_users"] + m["miss", "store_users"] >= len(users), m
        assert m["hit", "model_user_reads"] > 0, m
    limited.restart()
    body = {"view": "user_features", "ids": users}
    assert free.post("/v1/features:get", json=body).json() == limited.post("/v1/features:get", json=body).json()


def cache_metrics(s: Server) -> dict[tuple[str, str], float]:
    """recsys_state_cache_{entries,bytes}{cache=...} by (kind, cache), and
    recsys_state_cache_lookups_total{cache=...,result=...} by (result, cache)."""
    out = {}
    for line in s.get("/metrics").text.splitlines():
        m = re.match(r'recsys_state_cache_(entries|bytes)\{cache="([a-z_]+)"\} (\S+)$', line)
        if m:
            out[m.group(1), m.group(2)] = float(m.group(3))
        m = re.match(r'recsys_state_cache_lookups_total\{cache="([a-z_]+)",result="(hit|miss)"\} (\S+)$', line)
        if m:
            out[m.group(2), m.group(1)] = float(m.group(3))
    return out


def test_memory_limit_errors_name_the_flag(tmp_path):
    res = run("serve", "--state.memory-limit", "100MiB", "--data.dir", str(tmp_path / "d"), timeout=30)
    assert res.returncode != 0
    assert "state.memory-limit" in res.stderr and "100.0 MiB is less than the 256 MiB" in res.stderr, res.stderr
    res = run("serve", "--state.memory-limit", "lots", "--data.dir", str(tmp_path / "d"), timeout=30)
    assert res.returncode != 0 and '"lots" is not a size such as 2GiB' in res.stderr, res.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state:\n  memory-limit: 2GiB\n")
    res = run("config", "print", "--config", str(cfg))
    assert res.returncode == 0, res.stderr
    assert printed(res.stdout, "state.memory-limit") == ("2GiB", "file"), res.stdout
    cfg.write_text("state:\n  memory-limit: [1, 2]\n")
    res = run("config", "print", "--config", str(cfg))
    assert res.returncode == 2 and "a size such as 2GiB or 1536MiB" in res.stderr, res.stderr
