"""Kafka helpers of the end-to-end tests: a real single-node Apache Kafka
broker (KRaft) started by scripts/kafka/broker.sh from pinned Maven Central
jars, a `recsys serve --kafka.*` server, and a digest of everything the
server exposes through Arrow Flight.

Test modules import the `kafka_broker` fixture from here."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Server, poll, recsys_bin

BROKER_SH = REPO / "scripts/kafka/broker.sh"


class Broker:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.addr = ""

    def start(self) -> "Broker":
        out = subprocess.run([str(BROKER_SH), "start", str(self.dir)], check=True, capture_output=True, text=True, timeout=600)
        self.addr = out.stdout.strip().splitlines()[-1]
        return self

    def stop(self) -> None:
        subprocess.run([str(BROKER_SH), "stop", str(self.dir)], check=True, timeout=120)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return (self.dir / "broker.log").read_text()[-n:]
        except FileNotFoundError:
            return "(no broker log)"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("kafka"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def recsys(*args: str, timeout: float = 300) -> str:
    out = subprocess.run([recsys_bin(), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(f"recsys {' '.join(args)} -> {out.returncode}\n{out.stderr[-4000:]}")
    return out.stdout


def produce(broker: Broker, topic: str, files, fmt: str = "taobao", rate: float = 0, partitions: int = 4) -> dict:
    args = ["kafka", "produce", "--kafka.brokers", broker.addr, "--kafka.topic", topic, "--format", fmt,
            "--partitions", str(partitions), "--rate", str(rate), *map(str, files)]
    return json.loads(recsys(*args).strip().splitlines()[-1])


def dump(broker: Broker, topic: str) -> list[dict]:
    out = recsys("kafka", "dump", "--kafka.brokers", broker.addr, "--kafka.topic", topic)
    return [json.loads(l) for l in out.splitlines() if l.strip()]


def kafka_server(workdir: Path, broker: Broker, topic: str, group: str, name: str = "server", extra=()) -> Server:
    return Server(workdir, ["--kafka.brokers", broker.addr, "--kafka.topic", topic, "--kafka.group", group,
                            "--kafka.instance-id", name, *extra], name=name)


_GAUGE = re.compile(r'^recsys_kafka_applied_offset\{partition="(\d+)",topic="([^"]+)"\} (\S+)$', re.M)


def applied_offsets(server: Server, topic: str) -> dict[int, int]:
    text = server.get("/metrics", timeout=5).text
    return {int(p): int(float(v)) for p, t, v in _GAUGE.findall(text) if t == topic}


def wait_applied(server: Server, topic: str, ends: dict, timeout: float = 180) -> None:
    want = {int(p): int(o) for p, o in ends.items() if int(o) > 0}

    def check():
        got = applied_offsets(server, topic)
        return all(got.get(p, -1) >= o for p, o in want.items())
    poll(check, timeout, interval=0.2, what=f"{server.name} to apply {topic} up to {want}")


def _canon(v):
    if isinstance(v, float):
        # Floating-point sums (popularity, affinities) over events of several
        # partitions depend on the order partitions interleave in, in the
        # last bits only.
        return None if math.isnan(v) else float(f"{v:.9g}")
    if isinstance(v, list):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def digest(server: Server) -> tuple[str, dict[str, int]]:
    """SHA-256 over every row of every flight the server lists (all feature
    views, dead letters, and model tables once they exist), rows sorted.
    Returns the digest and the row count of each flight."""
    import pyarrow.flight as fl
    client = server.flight()
    h = hashlib.sha256()
    counts = {}
    try:
        infos = sorted(client.list_flights(), key=lambda i: list(i.descriptor.path))
        for info in infos:
            name = "/".join(p.decode() if isinstance(p, bytes) else p for p in info.descriptor.path)
            rows = []
            for ep in info.endpoints:
                table = client.do_get(ep.ticket).read_all()
                rows.extend(json.dumps(_canon(r), sort_keys=True, default=str) for r in table.to_pylist())
            rows.sort()
            counts[name] = len(rows)
            h.update(name.encode() + b"\0")
            for r in rows:
                h.update(r.encode() + b"\n")
    finally:
        client.close()
    return h.hexdigest(), counts
