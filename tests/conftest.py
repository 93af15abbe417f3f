"""Shared fixtures of the end-to-end tests of the recsys binary.

The tests drive a real `recsys serve` process (REST, gRPC and Arrow Flight)
through the `Server` helper below. Set RECSYS_BIN to the binary under test
(`make test-py` does); by default bin/recsys of the repository is used.
"""

from __future__ import annotations

import atexit
import csv
import gzip
import importlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
TAOBAO_HOT = SHARED / "data/taobao/UserBehavior-hot-110k.csv.gz"
TAOBAO_HOT_ROWS = 110_300

READY_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 90.0
LOG_TAIL_BYTES = 20_000

# Servers alive at the moment; their logs are attached to failing tests.
_LIVE: list["Server"] = []


@atexit.register
def _kill_leftovers() -> None:
    """Last resort (such as an interrupted run): never leave a server behind."""
    for s in list(_LIVE):
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()


def code_blocks(text: str, lang: str) -> list[str]:
    """The fenced ```lang blocks of a Markdown text, in order."""
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def recsys_bin() -> str:
    path = os.environ.get("RECSYS_BIN") or str(REPO / "bin/recsys")
    if not os.access(path, os.X_OK):
        pytest.fail(f"recsys binary not found or not executable: {path} (run `make build` or set RECSYS_BIN)")
    return path


_LONG_TTL: Path | None = None


def long_ttl_features() -> Path:
    """The default feature definitions with every TTL set to 10 years."""
    global _LONG_TTL
    if _LONG_TTL is None:
        import tempfile
        text = (REPO / "featurestore/features.yaml").read_text()
        text, n = re.subn(r"ttl: \w+", "ttl: 3650d", text)
        assert n >= 2, "featurestore/features.yaml has no ttl to override"
        fd, name = tempfile.mkstemp(prefix="recsys-features-", suffix=".yaml")
        os.write(fd, text.encode())
        os.close(fd)
        _LONG_TTL = Path(name)
    return _LONG_TTL


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(AssertionError):
    """The server process died or never became ready."""


def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Calls predicate until it returns a truthy value; fails after timeout.

    Exceptions of the predicate count as "not yet" (and the last one is
    reported on timeout), except ServerError, which fails at once."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except ServerError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


class Server:
    """One `recsys serve` process on a data dir and three fixed ports.

    start/stop/kill/restart keep the data dir and the ports, so a restarted
    server is reachable at the same URLs.
    """

    def __init__(self, workdir: Path, extra_args: Iterable[str] = (), name: str = "server", env: dict[str, str] | None = None):
        self.bin = recsys_bin()
        self.env = {**os.environ, **env} if env else None
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.log_path = self.workdir / f"{name}.log"
        self.extra_args = list(extra_args)
        self.http_port, self.grpc_port, self.flight_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.session = requests.Session()
        self._channel = None
        _LIVE.append(self)

    # -- addresses -------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    base_url = url

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def flight_uri(self) -> str:
        return f"grpc://127.0.0.1:{self.flight_port}"

    # -- lifecycle -------------------------------------------------------
    def args(self) -> list[str]:
        return [
            self.bin, "serve",
            "--data.dir", str(self.data_dir),
            "--http.addr", self._addr(self.http_port),
            "--grpc.addr", self._addr(self.grpc_port),
            "--flight.addr", self._addr(self.flight_port),
            # The tests replay historical data (Taobao 2017, fixed test times):
            # read on the event clock, as if live.
            "--clock", "event",
            # Most tests send events in no particular time order; late-data
            # tests override this (a later flag wins).
            "--ingest.allowed-lateness", "87600h",
            # ... and expect lifetime values years later: the default views
            # with a 10-year TTL.
            "--features", str(long_ttl_features()),
            *self.extra_args,
        ]

    @staticmethod
    def _addr(port: int) -> str:
        return f"127.0.0.1:{port}"

    def start(self, timeout: float = READY_TIMEOUT) -> "Server":
        """Starts the server and waits for /readyz; fails with the server's log."""
        assert not self.running, "server already running"
        first = self.starts == 0
        for attempt in range(5):
            self.starts += 1
            with open(self.log_path, "ab") as log:
                log.write(f"\n===== start #{self.starts}: {' '.join(self.args())}\n".encode())
                log.flush()
                offset = log.tell()
                self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
            try:
                self.wait_ready(timeout)
                return self
            except ServerError:
                self.kill()
                if attempt == 4 or "address already in use" not in self.log_path.read_bytes()[offset:].decode("utf-8", "replace"):
                    raise
                # A port was taken between probing and binding (or, on a
                # restart, by some client's ephemeral port): the first start
                # moves to new ports, a restart keeps its ports and waits.
                if first:
                    self.http_port, self.grpc_port, self.flight_port = free_port(), free_port(), free_port()
                else:
                    time.sleep(1)
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"{self.name} exited with code {code} before becoming ready; log:\n{self.log_tail()}")
            try:
                if self.session.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful stop (SIGTERM); SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise ServerError(f"{self.name} ignored SIGTERM for {timeout}s; log:\n{self.log_tail()}")
        self._drop_connections()
        return self.proc.returncode

    def kill(self) -> None:
        """Crash (SIGKILL) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drop_connections()

    def restart(self, graceful: bool = False, timeout: float = READY_TIMEOUT) -> "Server":
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(timeout)

    def close(self) -> None:
        self.kill()
        self.session.close()
        if self in _LIVE:
            _LIVE.remove(self)

    def _drop_connections(self) -> None:
        self.session.close()
        self.session = requests.Session()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        if len(data) > limit:
            data = b"...\n" + data[-limit:]
        return data.decode("utf-8", "replace")

    # -- REST helpers ----------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.get(self.url + path, **kw)

    def post(self, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", 30)
        return self.session.post(self.url + path, **kw)

    def stats(self) -> dict[str, int]:
        r = self.get("/v1/stats", timeout=5)
        assert r.status_code == 200, r.text
        body = r.json()
        return {k: int(v) for k, v in body.items()}

    def ingest(self, events: list[dict], expect_status: int = 200) -> dict:
        r = self.post("/v1/events", json={"events": events})
        assert r.status_code == expect_status, f"POST /v1/events -> {r.status_code} {r.text[:2000]}"
        return r.json()

    def wait_caught_up(self, timeout: float = CATCH_UP_TIMEOUT, min_log_end: int = 0) -> dict[str, int]:
        """Waits until every accepted event is applied (applied == log end)."""
        def check():
            if not self.running:
                raise ServerError(f"{self.name} is not running; log:\n{self.log_tail()}")
            s = self.stats()
            return s if s["applied_offset"] == s["log_end_offset"] and s["log_end_offset"] >= min_log_end else None
        try:
            return poll(check, timeout, what=f"{self.name} to catch up")
        except ServerError:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last stats: {self._safe_stats()}") from None

    def _safe_stats(self):
        try:
            return self.stats()
        except Exception as exc:  # noqa: BLE001
            return repr(exc)

    # -- gRPC ------------------------------------------------------------
    def channel(self):
        import grpc
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.grpc_addr)
        return self._channel

    def flight(self):
        import pyarrow.flight as fl
        return fl.connect(self.flight_uri)


# ---------------------------------------------------------------------------
# Failure reports: attach the logs of the servers alive during a failed test.

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _LIVE:
        for s in _LIVE:
            report.sections.append((f"{s.name} log ({s.log_path})", s.log_tail()))
    return report


# ---------------------------------------------------------------------------
# Fixtures

@pytest.fixture
def server_factory(tmp_path):
    """Makes (unstarted or started) servers in tmp_path; kills them all at teardown."""
    made: list[Server] = []

    def make(*extra_args: str, name: str | None = None, start: bool = True, env: dict[str, str] | None = None) -> Server:
        name = name or f"server{len(made)}"
        s = Server(tmp_path / name, extra_args, name=name, env=env)
        made.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def server(server_factory) -> Server:
    return server_factory()


# ---------------------------------------------------------------------------
# TLS: a throwaway test CA made with openssl, and servers that use it.

def openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"openssl {' '.join(args)}: {res.stderr}"


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=recsys test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Path:
    """A test CA with a server cert (127.0.0.1, localhost) and a client cert; a second, untrusted CA with its
    own client and server certs. Throwaway keys in a temporary directory."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not found")
    d = tmp_path_factory.mktemp("pki")
    server_ext = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                  "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
    make_ca(d, "ca")
    make_leaf(d, "server", "ca", "localhost", server_ext)
    make_leaf(d, "client", "ca", "recsys-test-client", client_ext)
    make_ca(d, "rogue-ca")
    make_leaf(d, "rogue-client", "rogue-ca", "rogue-client", client_ext)
    return d


class TLSServer(Server):
    """A server with --tls.*: https readiness poll with the test CA (and client cert for mTLS)."""

    def __init__(self, workdir, pki: Path, mtls: bool = False, name: str = "tls-server"):
        args = ["--tls.cert", str(pki / "server.crt"), "--tls.key", str(pki / "server.key")]
        if mtls:
            args += ["--tls.client-ca", str(pki / "ca.crt")]
        super().__init__(workdir, args, name=name)
        self.ca = str(pki / "ca.crt")
        self.ca_pem = (pki / "ca.crt").read_bytes()
        self.client_cert = (str(pki / "client.crt"), str(pki / "client.key")) if mtls else None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def flight_uri(self) -> str:
        return f"grpc+tls://127.0.0.1:{self.flight_port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerError(f"{self.name} exited with code {code} before becoming ready; log:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/readyz", verify=self.ca, cert=self.client_cert, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready over https after {timeout:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.05)


@pytest.fixture
def tls_server_factory(tmp_path, pki):
    made: list[TLSServer] = []

    def make(mtls: bool = False) -> TLSServer:
        s = TLSServer(tmp_path / f"tls{len(made)}", pki, mtls=mtls, name=f"{'m' if mtls else ''}tls-server{len(made)}")
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.close()


# Wire-compatible copies of google.rpc.Status and google.rpc.BadRequest, to
# read the grpc-status-details-bin trailer without googleapis-common-protos.
RPC_STATUS_PROTO = """
syntax = "proto3";
package e2e.rpc;
import "google/protobuf/any.proto";
message Status {
  int32 code = 1;
  string message = 2;
  repeated google.protobuf.Any details = 3;
}
message BadRequest {
  message FieldViolation {
    string field = 1;
    string description = 2;
    string reason = 3;
  }
  repeated FieldViolation field_violations = 1;
}
"""


class PB:
    """The generated modules: m (messages), g (gRPC stubs), status (rpc status)."""

    def __init__(self, m, g, status):
        self.m, self.g, self.status = m, g, status

    def field_violations(self, err) -> list[tuple[str, str]]:
        """(field, description) pairs of the BadRequest details of a grpc.RpcError."""
        out = []
        for key, value in err.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                st = self.status.Status.FromString(value)
                for any_ in st.details:
                    if any_.type_url.endswith("/google.rpc.BadRequest"):
                        br = self.status.BadRequest.FromString(any_.value)
                        out += [(v.field, v.description) for v in br.field_violations]
        return out


@pytest.fixture(scope="session")
def pb(tmp_path_factory) -> PB:
    """Python stubs of proto/recsys/v1/recsys.proto, generated for this session."""
    import grpc_tools
    out = tmp_path_factory.mktemp("pbgen")
    src = tmp_path_factory.mktemp("pbsrc")
    (src / "e2e_rpc_status.proto").write_text(RPC_STATUS_PROTO)
    proto_include = Path(grpc_tools.__file__).parent / "_proto"
    for include, proto, grpc_out in ((REPO / "proto", REPO / "proto/recsys/v1/recsys.proto", True),
                                     (src, src / "e2e_rpc_status.proto", False)):
        cmd = [sys.executable, "-m", "grpc_tools.protoc", "-I", str(include), "-I", str(proto_include),
               f"--python_out={out}", str(proto)]
        if grpc_out:
            cmd.append(f"--grpc_python_out={out}")
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"protoc failed: {res.stderr}"
    # The generated modules are the package recsys.v1, whose name is also
    # that of the Python client (clients/python): make them regular packages
    # found first, import them aside, and put the client's modules back.
    (out / "recsys" / "__init__.py").touch()
    (out / "recsys" / "v1" / "__init__.py").touch()
    ours = lambda name: name == "recsys" or name.startswith("recsys.")  # noqa: E731
    saved = {name: mod for name, mod in sys.modules.items() if ours(name)}
    sys.path.insert(0, str(out))
    try:
        for name in saved:
            del sys.modules[name]
        m = importlib.import_module("recsys.v1.recsys_pb2")
        g = importlib.import_module("recsys.v1.recsys_pb2_grpc")
        status = importlib.import_module("e2e_rpc_status_pb2")
    finally:
        sys.path.remove(str(out))
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    return PB(m, g, status)


# ---------------------------------------------------------------------------
# Taobao data and the expected features, computed independently of the server.

BEHAVIOR = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"}
COUNT_FEATURES = ("view_count", "cart_count", "fav_count", "purchase_count")
USER_FEATURES = COUNT_FEATURES + ("first_event_ts", "last_event_ts", "recent_items", "recent_categories")
ITEM_FEATURES = COUNT_FEATURES + ("first_event_ts", "last_event_ts", "category_id")


@dataclass
class Agg:
    view_count: int = 0
    cart_count: int = 0
    fav_count: int = 0
    purchase_count: int = 0
    first_event_ts: int | None = None
    last_event_ts: int | None = None

    def add(self, behavior: str, ts_ms: int) -> None:
        name = f"{behavior}_count"
        setattr(self, name, getattr(self, name) + 1)
        self.first_event_ts = ts_ms if self.first_event_ts is None else min(self.first_event_ts, ts_ms)
        self.last_event_ts = ts_ms if self.last_event_ts is None else max(self.last_event_ts, ts_ms)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in COUNT_FEATURES + ("first_event_ts", "last_event_ts")}


@dataclass
class Expected:
    rows: int
    users: dict[str, Agg]
    items: dict[str, Agg]
    # user -> [(ts_ms, item, category)] in file order
    user_events: dict[str, list] = field(repr=False)
    item_category: dict[str, str] = field(repr=False)


def read_taobao(path: Path) -> list[tuple[str, str, str, str, int]]:
    """Rows (user, item, category, behavior, ts_ms) with behaviors mapped to canonical names."""
    out = []
    with gzip.open(path, "rt", newline="") as f:
        for row in csv.reader(f):
            user, item, cat, beh, secs = row
            out.append((user, item, cat, BEHAVIOR[beh], int(secs) * 1000))
    return out


def aggregate(rows) -> Expected:
    users: dict[str, Agg] = defaultdict(Agg)
    items: dict[str, Agg] = defaultdict(Agg)
    user_events: dict[str, list] = defaultdict(list)
    item_cat_ts: dict[str, tuple[int, str]] = {}
    for user, item, cat, beh, ts in rows:
        users[user].add(beh, ts)
        items[item].add(beh, ts)
        user_events[user].append((ts, item, cat))
        prev = item_cat_ts.get(item)
        if prev is None or ts >= prev[0]:
            item_cat_ts[item] = (ts, cat)
    return Expected(len(rows), dict(users), dict(items), dict(user_events), {k: v[1] for k, v in item_cat_ts.items()})


@pytest.fixture(scope="session")
def taobao_path() -> Path:
    if not TAOBAO_HOT.exists():
        pytest.skip(f"Taobao sample not found at {TAOBAO_HOT} (expected ../shared/data/taobao/ beside the repository)")
    return TAOBAO_HOT


@pytest.fixture(scope="session")
def taobao_expected(taobao_path) -> Expected:
    rows = read_taobao(taobao_path)
    assert len(rows) == TAOBAO_HOT_ROWS, f"unexpected sample size {len(rows)}"
    return aggregate(rows)


def run_replay_target(url: str, path: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([recsys_bin(), "replay", "--format", "taobao", "--progress", "off", "--target", url, str(path), *extra],
                          capture_output=True, text=True, timeout=timeout)


def half_sent_post(port: int, content_length: int = 1000) -> socket.socket:
    """A connection that starts POST /v1/events (JSON) and sends only the start of its body."""
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.sendall(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n{\"events\": [" % content_length)
    return c


def exchange(server, cmd: dict, table):
    """A point-in-time DoExchange: streams table as the spine, returns the joined table."""
    import json
    import pyarrow.flight as fl
    client = fl.connect(server.flight_uri)
    try:
        writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(json.dumps(cmd)))
        writer.begin(table.schema)
        writer.write_table(table)
        writer.done_writing()
        out = reader.read_all()
        writer.close()
        return out
    finally:
        client.close()


def chunks(seq, n):
    seq = list(seq)
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def rest_values(features: list[dict]) -> dict:
    """{name: value} of a REST feature list."""
    return {f["name"]: f["value"] for f in features}


def pb_value(v):
    """Python value of a google.protobuf.Value."""
    kind = v.WhichOneof("kind")
    if kind is None or kind == "null_value":
        return None
    if kind == "number_value":
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "list_value":
        return [pb_value(x) for x in v.list_value.values]
    if kind == "struct_value":
        return {k: pb_value(x) for k, x in v.struct_value.fields.items()}
    raise AssertionError(f"unknown Value kind {kind}")


def describe_mismatches(mismatches: list, total: int, what: str, limit: int = 10) -> str:
    lines = [f"{len(mismatches)} of {total} {what} differ; first {min(limit, len(mismatches))}:"]
    lines += [f"  {m}" for m in mismatches[:limit]]
    return "\n".join(lines)


def expected_recent(events, index: int, limit: int = 20):
    """The last `limit` distinct values of field `index` of (ts, item, category) events, newest first.

    Returns (values, certain): certain is False when equal timestamps among the
    events that decide the list make the order ambiguous.
    """
    order = sorted(events, key=lambda e: e[0], reverse=True)
    out, seen, visited = [], set(), 0
    for e in order:
        visited += 1
        if e[index] not in seen:
            seen.add(e[index])
            out.append(e[index])
            if len(out) == limit:
                break
    deciding = order[:visited + 1]
    return out, len({e[0] for e in deciding}) == len(deciding)


def expected_view(expected: Expected, view: str) -> dict[str, dict]:
    """{id: {feature: value}} of the features that are fully determined by the data.

    recent_* lists are left out (see expected_recent)."""
    if view == "user_features":
        return {u: a.as_dict() for u, a in expected.users.items()}
    return {i: {**a.as_dict(), "category_id": expected.item_category[i]} for i, a in expected.items.items()}


def flight_rows(server: Server, view: str, columns: list[str] | None = None):
    """Full scan of a Flight view: (FlightInfo, table, {id: row}) with timestamps as Unix ms."""
    import json

    import pyarrow as pa
    import pyarrow.flight as fl
    client = server.flight()
    try:
        desc = (fl.FlightDescriptor.for_path(view) if columns is None
                else fl.FlightDescriptor.for_command(json.dumps({"view": view, "columns": columns})))
        info = client.get_flight_info(desc)
        assert len(info.endpoints) == 1, info.endpoints
        table = client.do_get(info.endpoints[0].ticket).read_all()
    finally:
        client.close()
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        cols[name] = col.to_pylist()
    id_col = table.column_names[0]
    rows = {}
    for i, key in enumerate(cols[id_col]):
        assert key not in rows, f"{view}: id {key!r} appears twice in the Flight scan"
        rows[key] = {n: cols[n][i] for n in table.column_names[1:]}
    return info, table, rows
