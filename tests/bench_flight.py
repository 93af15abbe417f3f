"""Arrow Flight throughput on this machine (run by `make bench-flight`).

Builds a data dir with ROWS users (one or two events each) by replaying a
generated JSONL file, serves it, and measures with pyarrow:
  - DoGet of the whole user_features view: one stream, and all endpoints of
    a partitioned scan read in parallel, each against its ceiling (the same
    batches served from memory by `recsys flight-ceiling`, a trivial Go
    Flight server, read by the same client);
  - a point-in-time join (DoExchange) of a spine of SPINE rows, its users
    in id order and shuffled.
Prints rows/s and MB/s (Arrow buffer bytes), medians of RUNS runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Server, recsys_bin  # noqa: E402

ROWS = int(os.environ.get("ROWS", "1000000"))
SPINE = int(os.environ.get("SPINE", "1000000"))
RUNS = int(os.environ.get("RUNS", "3"))
BASE = 1_767_225_600_000


def read_table(uri, ticket):
    c = fl.connect(uri)
    try:
        return c.do_get(ticket).read_all()
    finally:
        c.close()


def measure(uri, single, parallel):
    """Median (rows, bytes, seconds) of RUNS reads of the single ticket and
    of the parallel tickets on 4 threads."""
    def read(ticket):
        tab = read_table(uri, ticket)
        return tab.num_rows, tab.nbytes

    out = {"single": [], "parallel": []}
    for _ in range(RUNS):
        t = time.perf_counter()
        rows, nbytes = read(single[0])
        out["single"].append((rows, nbytes, time.perf_counter() - t))
        t = time.perf_counter()
        with ThreadPoolExecutor(4) as ex:
            parts = list(ex.map(read, parallel))
        out["parallel"].append((sum(p[0] for p in parts), sum(p[1] for p in parts), time.perf_counter() - t))
    res = {k: (v[0][0], v[0][1], statistics.median(r[2] for r in v)) for k, v in out.items()}
    res["first"] = out["single"][0][2]
    return res


@contextlib.contextmanager
def ceiling_server(path):
    p = subprocess.Popen([recsys_bin(), "flight-ceiling", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("listening on "):
            sys.exit(f"flight-ceiling: {line!r}")
        yield "grpc://" + line.split()[2]
    finally:
        p.terminate()
        p.wait(timeout=30)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="recsys-flight-bench-"))
    events = work / "events.jsonl"
    with events.open("w") as f:
        for i in range(ROWS):
            ts = BASE + (i * 7919) % (20 * 3600_000)
            f.write(json.dumps({"user_id": f"u{i:07d}", "item_id": f"i{i % 50_000}", "category_id": f"c{i % 300}",
                                "behavior": "view", "ts": ts}) + "\n")
            if i % 3 == 0:
                f.write(json.dumps({"user_id": f"u{i:07d}", "item_id": f"i{(i * 13) % 50_000}", "category_id": f"c{i % 300}",
                                    "behavior": "cart", "ts": ts + 60_000}) + "\n")
    s = Server(work / "srv", name="bench")
    t = time.time()
    res = subprocess.run([recsys_bin(), "replay", "--format", "jsonl", "--progress", "off", "--clock", "event",
                          "--ingest.allowed-lateness", "87600h", "--data.dir", str(s.data_dir), str(events)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(res.stdout + res.stderr)
    print(f"data: {ROWS} users, replayed in {time.time() - t:.1f}s; {os.cpu_count()} cores, pyarrow {pa.__version__}")
    s.start()
    try:
        client = fl.connect(s.flight_uri)
        info = client.get_flight_info(fl.FlightDescriptor.for_path("user_features"))
        print(f"user_features: {info.total_records} rows, {len(info.schema)} columns")

        lifetime = ["view_count", "cart_count", "fav_count", "purchase_count", "first_event_ts", "last_event_ts", "recent_items"]
        for label, cols in (("all 24 features", None), ("7 lifetime features", lifetime)):
            base_cmd = {"view": "user_features"}
            if cols:
                base_cmd["columns"] = cols
            sinfo = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps({**base_cmd, "partitions": 1})))
            pinfo = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps({**base_cmd, "partitions": 8})))
            ours = measure(s.flight_uri, [sinfo.endpoints[0].ticket], [e.ticket for e in pinfo.endpoints])
            # The ceiling: the same batches, as our DoGet sent them, served
            # from memory by a trivial Go Flight server (recsys
            # flight-ceiling), read by the same client the same way.
            table = read_table(s.flight_uri, sinfo.endpoints[0].ticket)
            path = work / "ceiling.arrow"
            with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
                for b in table.to_batches():
                    w.write_batch(b)
            del table
            with ceiling_server(path) as uri:
                ceil = measure(uri, [fl.Ticket(b"0/1")], [fl.Ticket(f"{i}/8".encode()) for i in range(8)])
            print(f"DoGet {label}: the first read (one stream; with the event clock it builds the view's columnar snapshot) {ours['first']:.2f}s")
            for what, key in (("one stream", "single"), ("8 endpoints on 4 threads", "parallel")):
                rows, nbytes, el = ours[key]
                crows, cbytes, cel = ceil[key]
                if crows != rows:
                    sys.exit(f"ceiling served {crows} rows, DoGet {rows}")
                print(f"DoGet {label}, {what}: {rows} rows, {nbytes / 1e6:.0f} MB in {el:.2f}s (median of {RUNS}): "
                      f"{rows / el / 1e6:.2f} M rows/s, {nbytes / el / 1e6:.0f} MB/s; "
                      f"ceiling {crows / cel / 1e6:.2f} M rows/s, {cbytes / cel / 1e6:.0f} MB/s: {cel / el:.2f} of the ceiling")

        n = min(SPINE, ROWS)
        cmd = {"op": "point_in_time", "views": ["user_features"], "features": ["view_count_1h", "cart_count_24h", "view_count_7d"]}
        ids = [f"u{i % ROWS:07d}" for i in range(n)]
        shuffled = list(ids)
        random.Random(1).shuffle(shuffled)
        # A spine in id order is joined slice by slice; one in no order (a
        # training set's usual shape) by partitions of its users.
        for what, spine_ids in (("users in id order", ids), ("users shuffled", shuffled)):
            spine = pa.table({"user_id": spine_ids,
                              "ts": pa.array([BASE + 20 * 3600_000] * n, type=pa.int64()),
                              "label": [i % 2 for i in range(n)]})
            times = []
            for _ in range(RUNS):
                t = time.perf_counter()
                writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(cmd)))
                writer.begin(spine.schema)
                writer.write_table(spine, max_chunksize=65536)
                writer.done_writing()
                out = reader.read_all()
                writer.close()
                times.append(time.perf_counter() - t)
                assert out.num_rows == n
            el = statistics.median(times)
            print(f"point-in-time join (DoExchange), {what}: {n} spine rows x 3 features in {el:.2f}s (median of {RUNS}): {n / el / 1e3:.0f} k rows/s")
        client.close()
    finally:
        s.close()


if __name__ == "__main__":
    main()
