"""Crash test: replay the Taobao files (≥ 200 k events, with bad records)
through a real Kafka broker while the recsys process is killed with SIGKILL
at 20 random moments and restarted. The final state (a digest over every
flight the server lists) and the dead-letter counts equal those of a run
without kills."""

from __future__ import annotations

import collections
import gzip
import random
import threading
import time

from conftest import TAOBAO_HOT
from kafka_harness import digest, dump, kafka_broker, kafka_server, produce, wait_applied  # noqa: F401 - fixture
from test_kafka import BAD_LINES, BAD_REASONS, TAOBAO_USERS

KILLS = 20


def test_crash_kill9_digest_equal(kafka_broker, tmp_path, capsys):
    topic = "t-crash"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n")
    head = tmp_path / "hot-head.csv.gz"  # re-sent events: duplicates by id
    with gzip.open(TAOBAO_HOT, "rt") as src, gzip.open(head, "wt") as dst:
        for i, line in zip(range(15_000), src):
            dst.write(line)
    inputs = [([bad], "lines"), ([TAOBAO_HOT], "taobao"), ([bad], "lines"), ([TAOBAO_USERS], "taobao"), ([head], "taobao"), ([bad], "lines")]
    # One partition: the models (factors, ranker, neighbour scores) depend on
    # the order of events, and only a single partition gives a total order,
    # so the digest can cover them too. Exactly-once over several partitions
    # is checked by counts in test_kafka.py and the kfake rebalance tests.
    produce(kafka_broker, topic, [bad], fmt="lines", partitions=1)  # creates the topic
    records = len(BAD_LINES)
    ends: dict = {}

    def producer():
        nonlocal records
        for files, fmt in inputs[1:]:
            out = produce(kafka_broker, topic, files, fmt=fmt, rate=6_000, partitions=1)
            records += out["records"]
            ends.update(out["end_offsets"])

    rng = random.Random(5)
    srv = kafka_server(tmp_path / "killed", kafka_broker, topic, "g-killed", name="killed").start()
    try:
        t = threading.Thread(target=producer)
        t.start()
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(0.2, 2.5))
            srv.kill()
            kills += 1
            srv.start()
        t.join(600)
        assert not t.is_alive()
        assert records >= 200_000
        wait_applied(srv, topic, ends, timeout=300)
        killed, counts = digest(srv)
        killed_stats = srv.stats()
    finally:
        srv.stop()
        srv.close()

    base = kafka_server(tmp_path / "base", kafka_broker, topic, "g-base", name="base").start()
    try:
        wait_applied(base, topic, ends, timeout=300)
        want, want_counts = digest(base)
        base_stats = base.stats()
    finally:
        base.stop()
        base.close()

    assert counts == want_counts
    assert killed == want
    for k in ("events_applied", "duplicates_skipped", "dead_letters", "users", "items"):
        assert killed_stats[k] == base_stats[k], k
    assert base_stats["dead_letters"] == 3 * sum(BAD_REASONS.values())
    # The dead-letter topic is written at least once (a kill between the
    # produce and the state commit repeats it); by source position, each
    # bad record is there exactly once per consumer group run.
    dlq = dump(kafka_broker, topic + ".dlq")
    positions = {(d["headers"]["recsys-source-partition"], d["headers"]["recsys-source-offset"]) for d in dlq}
    assert len(positions) == 3 * sum(BAD_REASONS.values())
    reasons = collections.Counter(d["headers"]["recsys-reason"] for d in {(d["headers"]["recsys-source-partition"], d["headers"]["recsys-source-offset"]): d for d in dlq}.values())
    assert reasons == {k: 3 * v for k, v in BAD_REASONS.items()}
    with capsys.disabled():
        print(f"\ncrash test: {kills} kills, {records} events, digest equal")
