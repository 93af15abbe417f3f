#!/usr/bin/env python3
"""Restart after a crash: SIGKILL a `recsys serve` holding the state of N
events, start it again on the same data dir, and time it until /readyz
answers and until /v1/stats shows every event applied.

    RECSYS_BIN=bin/recsys python3 scripts/bench_restart.py [--events 1000000] [--runs 3]

The events are generated (`recsys gen`, the hour before now) and loaded
with `--load` on the first start; each run kills the server once it has
applied them all (so what the restart applies again is what came after the
last checkpoint, at most --state.checkpoint-interval of it), restarts it,
and kills it again. Prints the medians.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 1.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


class Server:
    def __init__(self, binary: str, data: Path, log: Path, extra: list[str]):
        self.binary, self.data, self.log, self.extra = binary, data, log, extra
        self.ports = [free_port() for _ in range(3)]
        self.url = f"http://127.0.0.1:{self.ports[0]}"
        self.proc = None

    def start(self, args: list[str] = ()):
        cmd = [self.binary, "serve", "--data.dir", str(self.data), "--clock", "event",
               "--http.addr", f"127.0.0.1:{self.ports[0]}", "--grpc.addr", f"127.0.0.1:{self.ports[1]}",
               "--flight.addr", f"127.0.0.1:{self.ports[2]}", *self.extra, *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def stats(self) -> dict:
        status, body = get(self.url + "/v1/stats")
        if status != 200:
            return {}
        return {k: int(v) for k, v in json.loads(body).items()}

    def caught_up(self) -> bool:
        """Every record of the log applied."""
        st = self.stats()
        return st.get("log_end_offset", 0) > 0 and st.get("applied_offset") == st["log_end_offset"]

    def ready(self) -> bool:
        return get(self.url + "/readyz")[0] == 200

    def wait(self, what, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                sys.exit(f"bench_restart: the server exited with {self.proc.returncode}; see {self.log}")
            if what():
                return time.monotonic() - t0
            time.sleep(0.01)
        sys.exit(f"bench_restart: not done after {timeout:.0f}s; see {self.log}")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkpoint-interval", default="", help="serve's --state.checkpoint-interval (default: its own)")
    a = ap.parse_args()
    binary = os.environ.get("RECSYS_BIN", "bin/recsys")
    extra = ["--state.checkpoint-interval", a.checkpoint_interval] if a.checkpoint_interval else []
    with tempfile.TemporaryDirectory(prefix="recsys-restart-") as tmp:
        tmp = Path(tmp)
        events = tmp / "events.csv.gz"
        subprocess.run([binary, "gen", "--events", str(a.events), "--format", "taobao", "--out", str(events)],
                       check=True, stdout=subprocess.DEVNULL)
        srv = Server(binary, tmp / "data", tmp / "serve.log", extra)
        srv.start(["--load", str(events)])
        t = srv.wait(lambda: srv.ready() and srv.caught_up(), 1800)
        applied = srv.stats()["events_applied"]
        print(f"restart after SIGKILL, state of {applied} generated events (first load: {applied / t:.0f} events/s end to end)")
        ready, caught_up = [], []
        for _ in range(a.runs):
            srv.kill()
            srv.start()
            ready.append(srv.wait(srv.ready, 600))
            caught_up.append(srv.wait(srv.caught_up, 600) + ready[-1])
            if (got := srv.stats()["events_applied"]) != applied:
                sys.exit(f"bench_restart: {got} events applied after the restart, want {applied}")
        srv.kill()
        print(f"  to /readyz:          median {statistics.median(ready):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in ready)})")
        print(f"  to every event applied: median {statistics.median(caught_up):.2f} s  (runs: {', '.join(f'{x:.2f}' for x in caught_up)})")
        print(f"  data dir: {sum(f.stat().st_size for f in (tmp / 'data').rglob('*') if f.is_file()) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
