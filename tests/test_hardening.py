"""Adversarial checks of the running binary: a full disk, requests that
would take unbounded memory, replays that must not lose events to
lateness, slow clients, backups outside their root, cross-site posts,
slow shutdowns, undecodable protobuf, unreadable ids and dead letters that
must survive a rebuild from the log.

Each test here failed on the code before the hardening work (issue 14)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl
import pytest
import requests

from conftest import Server, exchange, half_sent_post, poll, recsys_bin

BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000


def ev(user: str, item: str, ts: int, behavior: str = "view", **kw) -> dict:
    return {"user_id": user, "item_id": item, "category_id": "c1", "behavior": behavior, "ts": ts, **kw}


def rss_peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# -- 1. a full disk ----------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 96 MiB tmpfs (skipped where the test may not mount one)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); the Go tests inject disk faults with errorfs instead")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_refuses_ingest_keeps_reads_and_resumes(small_fs, server_factory):
    s = server_factory(start=False)
    s.data_dir = small_fs / "data"
    s.extra_args += ["--ingest.min-free-bytes", str(32 << 20)]
    s.start()
    acked = 0
    for i in range(5):
        acked += s.ingest([ev(f"u{j}", f"i{j % 50}", BASE + i * 1000 + j) for j in range(500)])["accepted"]
    s.wait_caught_up()
    # Fill the filesystem until less than the minimum is left.
    st = os.statvfs(small_fs)
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (20 << 20)))
    r = s.post("/v1/events", json={"events": [ev("late-u", "i1", BASE + 10_000)]})
    assert r.status_code == 507, (r.status_code, r.text)
    assert "disk" in r.json()["message"] and "ingest.min-free-bytes" in r.json()["message"], r.text
    # gRPC says RESOURCE_EXHAUSTED; reads keep working; readiness and a metric say why.
    ready = s.get("/readyz")
    assert ready.status_code == 503 and "disk" in ready.json()["detail"], ready.text
    assert s.get("/v1/users/u1/features").status_code == 200
    metrics = s.get("/metrics").text
    assert re.search(r'^recsys_ingest_events_total\{code="disk_full",result="refused"\} [1-9]', metrics, re.M), metrics[-2000:]
    free = re.search(r"^recsys_disk_free_bytes (\S+)$", metrics, re.M)
    assert free and float(free.group(1)) < 32 << 20
    assert s.running
    # Space returns: ingest resumes by itself.
    filler.unlink()
    r = poll(lambda: (lambda r: r if r.status_code == 200 else None)(s.post("/v1/events", json={"events": [ev("after", "i1", BASE + 20_000)]})),
             30, what="ingest to resume")
    acked += r.json()["accepted"]
    assert s.get("/readyz").status_code == 200
    st2 = s.wait_caught_up()
    s.stop()
    s.start()
    st3 = s.wait_caught_up()
    assert st3["events_applied"] == acked == st2["events_applied"], (acked, st2, st3)


# -- 2. one request, bounded memory ------------------------------------------------------------

def test_spine_before_1970_answers_at_once(server):
    server.ingest([ev("u1", "i1", BASE)])
    server.wait_caught_up()
    spine = pa.table({"user_id": ["u1"], "ts": pa.array([-5], pa.int64())})
    start = time.monotonic()
    with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
        exchange(server, {"op": "point_in_time", "views": ["user_features"]}, spine)
    assert time.monotonic() - start < 5
    assert "spine.ts" in str(exc.value) and "before 1970" in str(exc.value), exc.value
    # The epoch itself is a valid time: an answer with nothing counted. (As a
    # timestamp: an int64 before 1971 can only be seconds, and is refused.)
    out = exchange(server, {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h"]},
                   pa.table({"user_id": ["u1"], "ts": pa.array([0], pa.timestamp("ms"))}))
    assert out.column("user.view_count_1h").to_pylist() in ([0], [None])
    assert rss_peak_bytes(server.proc.pid) < 1 << 30


def test_spine_of_20m_rows_is_answered_in_bounded_memory(server):
    """A 20 M-row spine is spilled to disk while it is received and joined back batch by batch:
    the server's peak RSS stays under 512 MB. The spine is cheap to make and to join (one user,
    one time, a lifetime count); what it bounds is the memory of receiving, holding and answering
    20 M rows, which is the same for any features."""
    server.ingest([ev("u1", "i1", BASE)])
    server.wait_caught_up()
    n = 20_000_000
    ids = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 2 * (n + 1), 2, dtype=np.int32)), pa.py_buffer(b"u1" * n))
    spine = pa.table({"user_id": ids, "ts": pa.array(np.full(n, BASE, dtype=np.int64))})
    client = fl.connect(server.flight_uri)
    try:
        cmd = {"op": "point_in_time", "views": ["user_features"], "features": ["view_count"]}
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(cmd).encode()))
        writer.begin(spine.schema)
        for batch in spine.to_batches(max_chunksize=1 << 20):
            writer.write_batch(batch)
        writer.done_writing()
        rows, counted = 0, 0
        for chunk in reader:  # batch by batch: the client holds no more than the server
            rows += chunk.data.num_rows
            counted += pc.sum(chunk.data.column("user.view_count")).as_py()
        writer.close()
    finally:
        client.close()
    assert rows == n and counted == n
    peak = rss_peak_bytes(server.proc.pid)
    print(f"20 M-row spine: server peak RSS {peak >> 20} MiB")
    assert peak < 512 << 20, peak
    assert server.get("/healthz").status_code == 200


def test_doput_batch_over_the_message_limit_is_refused(server):
    n = 3_000_000  # ~80 MB in one record batch: over the 64 MiB gRPC message limit
    users = pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 10 * (n + 1), 10, dtype=np.int32)), pa.py_buffer(b"user-00001" * n))
    table = pa.table({"user_id": users, "item_id": users, "behavior": pa.array(["view"] * 1).take(pa.array(np.zeros(n, dtype=np.int64))),
                      "ts": pa.array(np.full(n, BASE, dtype=np.int64))})
    client = fl.connect(server.flight_uri)
    try:
        with pytest.raises((fl.FlightError, pa.ArrowException, OSError)):
            writer, _ = client.do_put(fl.FlightDescriptor.for_path("events"), table.schema)
            writer.write_batch(table.to_batches(max_chunksize=n)[0])
            writer.close()
    finally:
        client.close()
    assert rss_peak_bytes(server.proc.pid) < 1 << 30
    assert server.stats()["log_end_offset"] == 0


# -- 3. replay keeps the file's order, and says when it lost events -------------------------------

class DelayingProxy:
    """Forwards POSTs to a server; holds every third one back for `delay` seconds first,
    so that the client times out and sends it again while the first attempt is still on its way.
    GETs (replay's probe and its wait for the server to apply) pass straight through."""

    def __init__(self, target: str, delay: float):
        self.target, self.delay, self.count, self.delayed = target, delay, 0, 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    proxy.count += 1
                    hold = proxy.count % 3 == 0
                    proxy.delayed += hold
                if hold:
                    time.sleep(proxy.delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                try:
                    r = requests.post(proxy.target + self.path, data=body, headers=headers, timeout=30)
                except requests.RequestException:
                    return
                try:
                    self.send_response(r.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                except OSError:
                    pass  # the client gave up on this attempt

            def do_GET(self):
                try:
                    r = requests.get(proxy.target + self.path, timeout=30)
                    self.send_response(r.status_code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                except (OSError, requests.RequestException):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def sorted_jsonl(path: Path, n: int, span_hours: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps(ev(f"u{i % 300}", f"i{i % 700}", BASE + i * span_hours * HOUR // n)) + "\n")
    return path


def test_replay_keeps_order_across_timeouts(server_factory, tmp_path):
    # One hour of lateness, events over 40 hours: a batch held back past
    # newer ones would be late.
    s = server_factory("--ingest.allowed-lateness", "1h")
    src = sorted_jsonl(tmp_path / "sorted.jsonl", 6000, 40)
    proxy = DelayingProxy(s.url, delay=2.5)
    try:
        res = subprocess.run([recsys_bin(), "replay", "--format", "jsonl", "--progress", "off", "--target", proxy.url,
                              "--batch", "300", "--timeout", "1s", str(src)], capture_output=True, text=True, timeout=300)
    finally:
        proxy.close()
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert proxy.delayed >= 5, proxy.delayed  # attempts did time out and were sent again
    assert re.search(r"replay: 6000 events read, 6000 accepted, 0 rejected", out), out
    time.sleep(3)  # the last held-back attempt reaches the server
    st = s.wait_caught_up()
    assert st["dead_letters"] == 0, st  # no event was ever judged late
    assert st["events_applied"] == 6000, st


def test_replay_exits_nonzero_when_events_are_rejected(server_factory, tmp_path):
    s = server_factory("--ingest.allowed-lateness", "1h")
    src = tmp_path / "mixed.jsonl"
    lines = [ev("u1", "i1", BASE + 10 * HOUR), ev("u1", "i2", BASE), ev("", "i3", BASE + 10 * HOUR)]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    args = [recsys_bin(), "replay", "--format", "jsonl", "--progress", "off", "--target", s.url, str(src)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "2 of 3 events were rejected" in out and "ts/late" in out and "user_id/missing" in out, out
    res = subprocess.run(args + ["--allow-rejected"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # A batch the server rejects whole is counted by its reasons.
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps(ev("u2", "i9", BASE)) + "\n")
    res = subprocess.run([recsys_bin(), "replay", "--format", "jsonl", "--progress", "off", "--target", s.url, str(late)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "ts/late" in res.stdout and "server_rejected" not in res.stdout, res.stdout + res.stderr


def test_out_of_order_batches_are_refused(server):
    def post(seq: int, e: dict) -> requests.Response:
        return server.post("/v1/events", json={"events": [e]}, headers={"Recsys-Stream": "s1", "Recsys-Seq": str(seq)})
    a = post(1, ev("o1", "i1", BASE))
    assert a.status_code == 200 and a.json()["accepted"] == 1
    again = post(1, ev("o1", "i1", BASE))  # a retry: the same answer, not ingested again
    assert again.status_code == 200 and again.json() == a.json()
    assert post(3, ev("o1", "i3", BASE)).status_code == 409  # early
    assert post(2, ev("o1", "i2", BASE)).status_code == 200
    stale = post(1, ev("o1", "i1", BASE))
    assert stale.status_code == 409 and "stale" in stale.json()["message"], stale.text
    assert server.wait_caught_up()["log_end_offset"] == 2
    assert server.post("/v1/events", json={"events": [ev("o1", "i1", BASE)]},
                       headers={"Recsys-Stream": "s2", "Recsys-Seq": "zero"}).status_code == 400


# -- 4. slow bodies do not hold slots -------------------------------------------------------------

def test_half_sent_bodies_do_not_starve_other_requests(server_factory):
    s = server_factory("--limits.max-in-flight", "16")
    socks = []
    try:
        for _ in range(16):
            socks.append(half_sent_post(s.http_port, 100000))
        time.sleep(0.5)
        start = time.monotonic()
        for _ in range(5):
            r = s.get("/v1/stats", timeout=5)
            assert r.status_code == 200, (r.status_code, r.text)
        assert s.ingest([ev("u1", "i1", BASE)])["accepted"] == 1
        assert time.monotonic() - start < 5
    finally:
        for c in socks:
            c.close()


# -- 5. backups only under their root -------------------------------------------------------------

def backup(s: Server, d: str):
    client = fl.connect(s.flight_uri)
    try:
        return json.loads(next(iter(client.do_action(fl.Action("backup", json.dumps({"dir": d}).encode())))).body.to_pybytes())
    finally:
        client.close()


def test_backups_only_under_the_backup_root(server_factory, tmp_path):
    plain = server_factory(name="noroot")
    with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
        backup(plain, str(tmp_path / "b1"))
    assert "--backup.dir" in str(exc.value)
    assert not (tmp_path / "b1").exists()

    root = tmp_path / "backups"
    s = server_factory("--backup.dir", str(root), name="rooted")
    s.ingest([ev("u1", "i1", BASE)])
    s.wait_caught_up()
    evil = Path("/tmp") / f"recsys-evil-{os.getpid()}"
    for bad in (str(evil), "../../x", "a/../../x", str(s.data_dir / "state" / "x"), str(root)):
        with pytest.raises((fl.FlightError, pa.ArrowException)) as exc:
            backup(s, bad)
        assert "dir:" in str(exc.value), (bad, exc.value)
    assert not evil.exists() and not (s.data_dir / "state" / "x").exists() and not (tmp_path / "x").exists()
    (root / "link").symlink_to(s.data_dir)
    with pytest.raises((fl.FlightError, pa.ArrowException)):
        backup(s, "link/y")
    assert not (s.data_dir / "y").exists()
    res = backup(s, "nightly/1")
    assert Path(res["dir"]) == (root / "nightly" / "1").resolve() and (root / "nightly" / "1" / "state").is_dir()
    out = subprocess.run([recsys_bin(), "backup", "--to", "nightly/2", "--flight.addr", f"127.0.0.1:{s.flight_port}"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and (root / "nightly" / "2" / "log").is_dir(), out.stdout + out.stderr
    # A root inside the data dir is refused at start.
    bad = subprocess.run([recsys_bin(), "serve", "--data.dir", str(tmp_path / "d"), "--backup.dir", str(tmp_path / "d" / "bk"),
                          "--http.addr", "127.0.0.1:0", "--grpc.addr", "127.0.0.1:0", "--flight.addr", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "backup.dir" in bad.stderr, bad.stderr


# -- 6. events only as JSON (or with a token) -----------------------------------------------------

def test_events_need_a_json_content_type(server, tmp_path):
    body = json.dumps({"events": [ev("cs1", "i1", BASE)]})
    for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", None):
        headers = {"Content-Type": ct} if ct else {}
        r = requests.post(server.url + "/v1/events", data=body, headers=headers, timeout=10)
        assert r.status_code == 415, (ct, r.status_code, r.text)
        assert "content-type" in r.json()["message"], r.text
    assert server.stats()["log_end_offset"] == 0
    r = requests.post(server.url + "/v1/events", data=body, headers={"Content-Type": "application/json; charset=utf-8"}, timeout=10)
    assert r.status_code == 200, r.text


def test_events_with_a_token_may_omit_the_content_type(server_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("writer-token-0123456789 write\n")
    s = server_factory("--auth.token-file", str(tokens))
    body = json.dumps({"events": [ev("cs2", "i1", BASE)]})
    r = requests.post(s.url + "/v1/events", data=body, headers={"Content-Type": "text/plain", "Authorization": "Bearer writer-token-0123456789"}, timeout=10)
    assert r.status_code == 200, r.text


# -- 7. bounded shutdown ---------------------------------------------------------------------------

def test_sigterm_exits_within_the_shutdown_timeout(server_factory):
    s = server_factory("--shutdown.timeout", "2s")
    s.ingest([ev("u1", "i1", BASE)])
    s.wait_caught_up()
    # Hold a half-sent body, an idle keep-alive connection and an open
    # Flight stream that is never read.
    held = half_sent_post(s.http_port)
    idle = socket.create_connection(("127.0.0.1", s.http_port))
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    client = fl.connect(s.flight_uri)
    reader = client.do_get(fl.Ticket(json.dumps({"view": "user_features"}).encode()))
    try:
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(timeout=30)
        took = time.monotonic() - start
        assert code == 0 and took < 2 + 5, (code, took)
    finally:
        held.close()
        idle.close()
        client.close()


def test_a_second_signal_exits_at_once(server_factory):
    s = server_factory("--shutdown.timeout", "60s")
    held = half_sent_post(s.http_port)
    try:
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(timeout=10)
        assert time.monotonic() - start < 2
    finally:
        held.close()


def test_eval_stops_on_sigterm(tmp_path):
    src = tmp_path / "events.csv"
    with open(src, "w") as f:
        for i in range(200_000):
            f.write(f"{i % 3000},{i % 9000},{i % 50},{'buy' if i % 7 == 0 else 'pv'},{1511658000 + i}\n")
    p = subprocess.Popen([recsys_bin(), "eval", "--format", "taobao", str(src), "--progress", "off"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        assert p.poll() is None, p.communicate()
        start = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        assert time.monotonic() - start < 5
        assert p.returncode != 0
    finally:
        if p.poll() is None:
            p.kill()


# -- 8. undecodable protobuf is the caller's fault -------------------------------------------------

def test_grpc_undecodable_messages_are_invalid_argument(server, pb):
    ch = server.channel()
    raw = ch.unary_unary("/recsys.v1.EventService/Ingest", request_serializer=None, response_deserializer=None)
    good = pb.m.IngestRequest(events=[pb.m.Event(user_id="Ā", item_id="i1", behavior="view", ts=BASE)]).SerializeToString()
    bad_utf8 = good.replace("Ā".encode(), b"\xc4\x20")
    assert len(bad_utf8) == len(good) and bad_utf8 != good
    for name, body in (("garbage", b"\xff\xff\xff\xff\xff"), ("truncated", good[:-3]), ("invalid UTF-8", bad_utf8)):
        with pytest.raises(grpc.RpcError) as exc:
            raw(body, timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, exc.value)
        assert "request: not a valid protobuf message" in exc.value.details(), (name, exc.value.details())
    # The channel still works, and nothing was ingested.
    assert raw(good, timeout=10)
    assert server.wait_caught_up()["log_end_offset"] == 1
    # Streams too (Flight DoAction with a garbage Action).
    fch = grpc.insecure_channel(f"127.0.0.1:{server.flight_port}")
    try:
        do_action = fch.unary_stream("/arrow.flight.protocol.FlightService/DoAction", request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as exc:
            list(do_action(b"\xff\xff\xff", timeout=10))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value
    finally:
        fch.close()


# -- 9. ids that a URL path cannot carry -----------------------------------------------------------

@pytest.mark.parametrize("field", ["user_id", "item_id", "category_id"])
@pytest.mark.parametrize("value", [".", ".."])
def test_dot_ids_are_rejected_at_ingest(server, field, value):
    e = ev("u1", "i1", BASE)
    e[field] = value
    r = server.post("/v1/events", json={"events": [e, ev("u1", "i1", BASE + 1)]})
    assert r.status_code == 200, r.text
    rej = r.json()["rejected"]
    assert len(rej) == 1 and rej[0]["field"] == field and rej[0]["code"] == "reserved", rej
    # Three dots are an id like any other: readable by its path.
    r = server.get("/v1/users/.../features")
    assert r.status_code == 200 and r.json()["id"] == "...", r.text


# -- 11. dead letters survive a rebuild from the log -----------------------------------------------

def test_dead_letters_survive_a_rebuild_from_the_log(server_factory):
    s = server_factory("--ingest.allowed-lateness", "1h")
    r = s.ingest([ev("u1", "i1", BASE + 10 * HOUR), ev("u1", "i2", BASE)])
    assert r["accepted"] == 1 and r["rejected"][0]["code"] == "late"
    st = s.wait_caught_up()
    assert st["dead_letters"] == 1 and st["log_end_offset"] == 2, st
    s.stop()
    shutil.rmtree(s.data_dir / "state")  # the state is derived: rebuild it from the log
    s.start()
    st = s.wait_caught_up()
    assert st["dead_letters"] == 1 and st["events_applied"] == 1, st
    dl = s.get("/v1/dead-letters").json()
    assert [d["code"] for d in dl["dead_letters"]] == ["late"], dl
