"""recsys serve --kafka.* against a real Apache Kafka broker (KRaft, single
node, started by scripts/kafka/broker.sh): ingest through the topic, dead
letters, checkpoint and restore, rebuild, and a broker restart mid-stream."""

from __future__ import annotations

import collections
import gzip
import threading
import time

from conftest import TAOBAO_HOT, long_ttl_features, poll
from kafka_harness import (digest, dump, kafka_broker, kafka_server, produce,  # noqa: F401 - fixture
                           recsys, wait_applied)

TAOBAO_USERS = TAOBAO_HOT.parent / "UserBehavior-users-84k.csv.gz"

# One line each: undecodable (twice), missing user, unknown behavior, one
# valid event, then an event of the same user (same partition) far older
# than the partition's watermark.
BAD_LINES = [
    '{"user_id":"bad-1",',
    "not json at all",
    '{"item_id":"i1","behavior":"view","ts":1511658000000}',
    '{"user_id":"bad-2","item_id":"i1","behavior":"teleport","ts":1511658000000}',
    '{"user_id":"late-1","item_id":"i1","behavior":"view","ts":1511658000000}',
    '{"user_id":"late-1","item_id":"i2","behavior":"view","ts":1167609600000}',
]
BAD_REASONS = {"undecodable": 2, "missing": 1, "unknown_behavior": 1, "late": 1}


def unique_events(path) -> int:
    with gzip.open(path, "rt") as f:
        return len({line.strip() for line in f if line.strip()})


def merged(*ends: dict) -> dict:
    out: dict = {}
    for e in ends:
        for p, o in e.items():
            out[p] = max(out.get(p, 0), o)
    return out


def test_ingest_dead_letters_checkpoint_rebuild(kafka_broker, tmp_path):
    topic = "t-main"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(BAD_LINES) + "\n")
    # Create the topic before the server subscribes, with one partition:
    # the models depend on the order of events, which only one partition
    # fixes, and the digests below cover the model tables.
    first = produce(kafka_broker, topic, [bad], fmt="lines", partitions=1)
    # Backups go under --backup.dir only: here the work dir of the copy below.
    srv = kafka_server(tmp_path / "a", kafka_broker, topic, "g-main", name="a", extra=["--backup.dir", str(tmp_path / "b")]).start()
    try:
        # POST /v1/events publishes to the topic and answers after the ack.
        r = srv.ingest([{"user_id": "rest-1", "item_id": "i9", "behavior": "purchase", "ts": 1511658000000}])
        assert r["accepted"] == 1
        poll(lambda: srv.get("/v1/users/rest-1/features").status_code == 200
             and srv.get("/v1/users/rest-1/features").json()["features"][3]["value"] == 1, 30, what="rest-1 readable")

        wait_applied(srv, topic, first["end_offsets"])
        assert srv.stats()["dead_letters"] == sum(BAD_REASONS.values())
        # Readiness and stats follow the consumer in Kafka mode.
        ready = srv.get("/readyz")
        assert ready.status_code == 200 and "consumer lag" in ready.json()["detail"], ready.text
        assert int(srv.get("/v1/stats").json()["max_event_ts"]) > 0
        # Stats report the consumer's position in the topic (summed over its
        # partitions), not the empty embedded log.
        def caught_up():
            st = {k: int(v) for k, v in srv.get("/v1/stats").json().items()}
            return st if st["applied_offset"] == st["log_end_offset"] > 0 else None
        st = poll(caught_up, 30, what="Kafka stats to show the consumer's position")
        assert st["applied_offset"] >= sum(int(o) for o in first["end_offsets"].values()), (st, first)
        assert st["watermark"] > 0, st
        dlq = dump(kafka_broker, topic + ".dlq")
        assert collections.Counter(d["headers"]["recsys-reason"] for d in dlq) == BAD_REASONS
        for d in dlq:
            assert d["headers"]["recsys-source-topic"] == topic
            assert int(d["headers"]["recsys-source-offset"]) < first["end_offsets"][d["headers"]["recsys-source-partition"]]
            assert d["headers"]["recsys-error"]
        # Undecodable records never stopped their partition: the valid event
        # after them is applied.
        assert srv.get("/v1/users/late-1/features").status_code == 200

        hot = produce(kafka_broker, topic, [TAOBAO_HOT])
        wait_applied(srv, topic, hot["end_offsets"])
        out = recsys("backup", "--to", "data", "--flight.addr", srv.flight_uri.removeprefix("grpc://"))
        assert "applied_offset" in out
        users = produce(kafka_broker, topic, [TAOBAO_USERS])
        wait_applied(srv, topic, users["end_offsets"])
        want, counts = digest(srv)
        want_stats = srv.stats()
        assert counts["dead_letters"] == sum(BAD_REASONS.values())
        assert want_stats["events_applied"] > 190_000
    finally:
        srv.stop()
        srv.close()

    # The checkpoint resumes from its offsets and replays the rest: the same
    # state, and no event read twice (no duplicate skipped beyond the run's).
    copy = kafka_server(tmp_path / "b", kafka_broker, topic, "g-main", name="b").start()
    try:
        wait_applied(copy, topic, users["end_offsets"])
        got, _ = digest(copy)
        st = copy.stats()
        assert got == want
        assert (st["events_applied"], st["duplicates_skipped"], st["dead_letters"]) == \
            (want_stats["events_applied"], want_stats["duplicates_skipped"], want_stats["dead_letters"])
    finally:
        copy.stop()

    # Rebuild: reset the state and re-consume the whole topic.
    out = recsys("rebuild", "--data.dir", str(copy.data_dir), "--kafka.brokers", kafka_broker.addr, "--kafka.topic", topic,
                 "--kafka.group", "g-main", "--clock", "event", "--ingest.allowed-lateness", "87600h",
                 "--features", str(long_ttl_features()))
    assert '"events"' in out
    copy.start()
    try:
        got, _ = digest(copy)
        assert got == want
    finally:
        copy.stop()
        copy.close()


def test_ingest_future_dead_letter_through_topic(kafka_broker, tmp_path):
    """A future event refused by POST /v1/events in Kafka mode goes through
    the topic like the events: kept once by the consumer (also after a
    rebuild from the topic) and sent to the dead-letter topic."""
    topic = "t-future"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    produce(kafka_broker, topic, [empty], fmt="lines", partitions=1)
    srv = kafka_server(tmp_path / "f", kafka_broker, topic, "g-future", name="future").start()
    try:
        future_ts = int(time.time() * 1000) + 24 * 3600 * 1000
        r = srv.ingest([{"user_id": "f-1", "item_id": "i1", "behavior": "view", "ts": 1511658000000},
                        {"user_id": "f-1", "item_id": "i2", "behavior": "view", "ts": future_ts}])
        assert r["accepted"] == 1 and [x["code"] for x in r["rejected"]] == ["future"], r
        poll(lambda: srv.stats()["dead_letters"] == 1 and srv.stats()["events_applied"] == 1, 30,
             what="the future event's dead letter kept by the consumer")
        dlq = dump(kafka_broker, topic + ".dlq")
        assert [d["headers"]["recsys-reason"] for d in dlq] == ["future"], dlq
        assert dlq[0]["headers"]["recsys-source-topic"] == topic
    finally:
        srv.stop()
    recsys("rebuild", "--data.dir", str(srv.data_dir), "--kafka.brokers", kafka_broker.addr, "--kafka.topic", topic,
           "--kafka.group", "g-future", "--clock", "event", "--ingest.allowed-lateness", "87600h",
           "--features", str(long_ttl_features()))
    srv.start()
    try:
        st = srv.stats()
        assert (st["events_applied"], st["dead_letters"]) == (1, 1), st
    finally:
        srv.stop()
        srv.close()


def test_broker_restart_mid_stream(kafka_broker, tmp_path):
    topic = "t-restart"
    srv = kafka_server(tmp_path, kafka_broker, topic, "g-restart", name="restart")
    produced: dict = {}

    def producer():
        produced.update(produce(kafka_broker, topic, [TAOBAO_HOT], rate=25_000))

    # Create the topic first so that the server's subscription finds it.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    produce(kafka_broker, topic, [empty], fmt="lines")
    srv.start()
    try:
        t = threading.Thread(target=producer)
        t.start()
        time.sleep(1.5)
        kafka_broker.stop()
        time.sleep(2)
        kafka_broker.start()
        t.join(300)
        assert not t.is_alive() and produced, "producer did not finish"
        assert produced["records"] == 110_300
        wait_applied(srv, topic, produced["end_offsets"])
        st = srv.stats()
        # Nothing lost, nothing counted twice: every distinct event applied
        # once, the exact repeats of the file skipped as duplicates, no other.
        assert st["events_applied"] == unique_events(TAOBAO_HOT)
        assert st["events_applied"] + st["duplicates_skipped"] == 110_300
        assert sum(int(o) for o in produced["end_offsets"].values()) == 110_300
    finally:
        srv.stop()
        srv.close()


def test_broker_restart_waits_until_ready(tmp_path):
    """broker.sh start on a DIR of an earlier run returns only once the new
    broker is up (its log holds the earlier run's ready line too)."""
    import socket
    from kafka_harness import Broker
    b = Broker(tmp_path / "kafka")
    b.start()
    try:
        b.stop()
        b.start()
        host, port = b.addr.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=2).close()
        log = (tmp_path / "kafka" / "broker.log").read_text()
        assert log.count("Kafka Server started") == 2, log[-2000:]
    finally:
        b.stop()
