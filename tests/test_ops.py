"""Security and overload behaviour of `recsys serve`: bearer tokens with
scopes on REST, gRPC and Arrow Flight; loopback-only listening without
tokens; TLS and mTLS on the three listeners (with a throwaway test CA made
with openssl in tmp_path); the per-listener concurrency limit (429 /
RESOURCE_EXHAUSTED), its metrics and the memory after a burst."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pyarrow.flight as fl
import pytest
import requests

from conftest import Server, chunks, free_port, half_sent_post, recsys_bin

BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR_MS = 3_600_000

TOKENS = {
    "read": "read-token-0123456789abcdef",
    "write": "write-token-0123456789abcdef",
    "admin": "admin-token-0123456789abcdef",
}
WRONG_TOKEN = "wrong-token-0123456789abcdef"

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def bearer(token: str | None) -> dict:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def grpc_md(token: str | None):
    return None if token is None else [("authorization", f"Bearer {token}")]


def flight_opts(token: str | None, timeout: float = 10) -> fl.FlightCallOptions:
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    return fl.FlightCallOptions(headers=headers, timeout=timeout)


def write_token_file(path: Path) -> Path:
    path.write_text("# test tokens\n\n" + "".join(f"{tok} {scope}\n" for scope, tok in TOKENS.items()))
    return path


def events(prefix: str, n: int, users: int = 20, items: int = 50, ts: int = BASE_TS) -> list[dict]:
    return [{"user_id": f"{prefix}u{i % users}", "item_id": f"{prefix}i{i % items}", "behavior": "view", "ts": ts + i}
            for i in range(n)]


def health_check(channel, timeout: float = 5) -> bytes:
    """grpc.health.v1.Health/Check of the whole server (empty request), raw bytes."""
    call = channel.unary_unary(HEALTH_CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return call(b"", timeout=timeout)


SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


def reflection_services(channel, timeout: float = 5) -> bytes:
    """Raw ServerReflectionResponse of list_services (field 7) = "*"."""
    call = channel.stream_stream(REFLECTION, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return b"".join(call(iter([b"\x3a\x01*"]), timeout=timeout))


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"unparsable metrics line {line!r}"
        labels = frozenset(label_re.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


# ---------------------------------------------------------------------------
# Authentication and scopes


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    """A server with three tokens (read, write, admin), some data and one dead letter."""
    d = tmp_path_factory.mktemp("auth")
    tf = write_token_file(d / "tokens.txt")
    s = Server(d, ["--auth.token-file", str(tf), "--ingest.allowed-lateness", "1h"], name="auth-server")
    try:
        s.start()  # /readyz needs no token, so the conftest readiness poll works
        h = bearer(TOKENS["write"])
        r = requests.post(s.url + "/v1/events", json={"events": events("a", 200)}, headers=h, timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == 200, r.text
        # An event far behind the watermark: a dead letter.
        r = requests.post(s.url + "/v1/events", headers=h, timeout=30, json={"events": [
            {"user_id": "late-user", "item_id": "late-item", "behavior": "view", "ts": BASE_TS - 5 * HOUR_MS},
            {"user_id": "au0", "item_id": "ai0", "behavior": "view", "ts": BASE_TS + 1000}]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        s.session.headers.update(bearer(TOKENS["read"]))  # for conftest's stats()/wait_caught_up()
        s.wait_caught_up()
        yield s
    finally:
        s.close()


def assert_rest_error(r: requests.Response, status: int, code: int):
    assert r.status_code == status, f"{r.request.method} {r.request.path_url} -> {r.status_code} {r.text[:500]}"
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"], body
    if status == 401:
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), dict(r.headers)


def test_auth_rest(authed):
    s = authed
    features = {"view": "item_features", "ids": ["ai0", "ai1"]}
    one_event = lambda tag: {"events": [{"user_id": f"rest-{tag}", "item_id": "ai0", "behavior": "view", "ts": BASE_TS + 2000}]}  # noqa: E731

    def call(method, path, token=None, raw_auth=None, **kw):
        headers = bearer(token) if raw_auth is None else {"Authorization": raw_auth}
        return requests.request(method, s.url + path, headers=headers, timeout=30, **kw)

    log_end = s.stats()["log_end_offset"]

    # No token, an unknown token, a malformed header: 401 with code 16.
    for kw in ({}, {"token": WRONG_TOKEN}, {"raw_auth": TOKENS["admin"]}, {"raw_auth": "Basic " + TOKENS["admin"]},
               {"raw_auth": "Bearer "}, {"token": TOKENS["admin"] + "x"}, {"token": TOKENS["admin"][:-1]}):
        for method, path, body in (("GET", "/v1/stats", None), ("POST", "/v1/features:get", features),
                                   ("GET", "/v1/items/ai0/features", None), ("POST", "/v1/events", one_event("anon")),
                                   ("GET", "/v1/dead-letters", None), ("GET", "/v1/feature-views", None)):
            assert_rest_error(call(method, path, json=body, **kw), 401, 16)

    # Open endpoints.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        r = call("GET", path)
        assert r.status_code == 200, f"{path} -> {r.status_code} {r.text[:300]}"
        r = call("GET", path, token=WRONG_TOKEN)  # a bad token does not break the open endpoints
        assert r.status_code == 200, f"{path} with a wrong token -> {r.status_code}"

    # Read: every read route, no ingest, no dead letters.
    rd = TOKENS["read"]
    r = call("POST", "/v1/features:get", rd, json=features)
    assert r.status_code == 200 and [e["id"] for e in r.json()["entities"]] == ["ai0", "ai1"], r.text[:500]
    for path in ("/v1/stats", "/v1/items/ai0/features", "/v1/users/au0/features", "/v1/feature-views",
                 "/v1/users/au0/recommendations", "/v1/items/popular"):
        r = call("GET", path, rd)
        assert r.status_code == 200, f"{path} -> {r.status_code} {r.text[:300]}"
    assert_rest_error(call("POST", "/v1/events", rd, json=one_event("read")), 403, 7)
    assert_rest_error(call("GET", "/v1/dead-letters", rd), 403, 7)
    assert s.stats()["log_end_offset"] == log_end, "a refused ingest was appended to the log"

    # Write: ingest and read, no dead letters.
    wr = TOKENS["write"]
    r = call("POST", "/v1/events", wr, json=one_event("write"))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert call("POST", "/v1/features:get", wr, json=features).status_code == 200
    assert call("GET", "/v1/stats", wr).status_code == 200
    assert_rest_error(call("GET", "/v1/dead-letters", wr), 403, 7)

    # Admin: everything.
    ad = TOKENS["admin"]
    r = call("GET", "/v1/dead-letters", ad)
    assert r.status_code == 200, r.text
    body = r.json()
    assert int(body["total"]) == 1 and body["dead_letters"][0]["event"]["item_id"] == "late-item", body
    r = call("POST", "/v1/events", ad, json=one_event("admin"))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert call("POST", "/v1/features:get", ad, json=features).status_code == 200

    assert s.stats()["log_end_offset"] == log_end + 2, "exactly the write and admin events are in the log"


def test_auth_grpc(authed, pb):
    s = authed
    ch = s.channel()
    feats = pb.g.FeatureServiceStub(ch)
    admin = pb.g.AdminServiceStub(ch)
    ingest = pb.g.EventServiceStub(ch)
    recommend = pb.g.RecommendServiceStub(ch)
    get_req = pb.m.GetFeaturesRequest(view="item_features", ids=["ai0", "ai1"])

    def ev(tag):
        return pb.m.IngestRequest(events=[pb.m.Event(user_id=f"grpc-{tag}", item_id="ai0", behavior="view", ts=BASE_TS + 3000)])

    def code_of(fn, req, token=None, metadata=None):
        try:
            fn(req, metadata=metadata if metadata is not None else grpc_md(token), timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()

    log_end = s.stats()["log_end_offset"]
    calls = [(feats.GetFeatures, get_req), (feats.ListFeatureViews, pb.m.ListFeatureViewsRequest()),
             (feats.GetItemFeatures, pb.m.GetItemFeaturesRequest(item_id="ai0")),
             (admin.GetStats, pb.m.GetStatsRequest()), (admin.ListDeadLetters, pb.m.ListDeadLettersRequest()),
             (ingest.Ingest, ev("anon")), (recommend.PopularItems, pb.m.PopularItemsRequest())]
    for md in (None, grpc_md(WRONG_TOKEN), [("authorization", TOKENS["admin"])],
               [("authorization", "Basic " + TOKENS["admin"])], grpc_md(TOKENS["admin"] + "x")):
        for fn, req in calls:
            assert code_of(fn, req, metadata=md or []) == grpc.StatusCode.UNAUTHENTICATED, (fn, md)

    rd, wr, ad = TOKENS["read"], TOKENS["write"], TOKENS["admin"]
    resp = feats.GetFeatures(get_req, metadata=grpc_md(rd), timeout=10)
    assert [e.id for e in resp.entities] == ["ai0", "ai1"]
    for fn, req in calls:
        want = {ingest.Ingest: grpc.StatusCode.PERMISSION_DENIED,
                admin.ListDeadLetters: grpc.StatusCode.PERMISSION_DENIED}.get(fn, grpc.StatusCode.OK)
        assert code_of(fn, req if fn is not ingest.Ingest else ev("read"), rd) == want, fn
    assert s.stats()["log_end_offset"] == log_end, "a refused ingest was appended to the log"

    assert ingest.Ingest(ev("write"), metadata=grpc_md(wr), timeout=10).accepted == 1
    assert code_of(feats.GetFeatures, get_req, wr) == grpc.StatusCode.OK
    assert code_of(admin.GetStats, pb.m.GetStatsRequest(), wr) == grpc.StatusCode.OK
    assert code_of(admin.ListDeadLetters, pb.m.ListDeadLettersRequest(), wr) == grpc.StatusCode.PERMISSION_DENIED

    dl = admin.ListDeadLetters(pb.m.ListDeadLettersRequest(), metadata=grpc_md(ad), timeout=10)
    assert dl.total == 1 and dl.dead_letters[0].event.item_id == "late-item", dl
    assert ingest.Ingest(ev("admin"), metadata=grpc_md(ad), timeout=10).accepted == 1
    assert code_of(feats.GetFeatures, get_req, ad) == grpc.StatusCode.OK
    assert s.stats()["log_end_offset"] == log_end + 2

    # Health and reflection need no token (a wrong one does not hurt either).
    assert health_check(ch) == SERVING
    assert b"recsys.v1.FeatureService" in reflection_services(ch)
    call = ch.unary_unary(HEALTH_CHECK, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    assert call(b"", metadata=grpc_md(WRONG_TOKEN), timeout=5) == SERVING


def test_auth_flight(authed):
    s = authed
    client = fl.connect(s.flight_uri)
    try:
        desc = fl.FlightDescriptor.for_path("item_features")
        cmd = fl.FlightDescriptor.for_command(json.dumps({"view": "item_features", "ids": ["ai0", "ai1"]}))
        for token in (None, WRONG_TOKEN):
            o = flight_opts(token)
            with pytest.raises(fl.FlightUnauthenticatedError):
                list(client.list_flights(options=o))
            with pytest.raises(fl.FlightUnauthenticatedError):
                client.get_flight_info(desc, o)
            # pyarrow 21 raises a plain OSError (not FlightUnauthenticatedError) from get_schema.
            with pytest.raises((fl.FlightUnauthenticatedError, OSError), match="(?i)unauthenticated"):
                client.get_schema(desc, o)
            ticket = fl.Ticket(json.dumps({"view": "item_features", "ids": ["ai0"]}).encode())
            with pytest.raises(fl.FlightUnauthenticatedError):
                client.do_get(ticket, o).read_all()
        for scope in ("read", "write", "admin"):
            o = flight_opts(TOKENS[scope])
            paths = {f.descriptor.path[0] for f in client.list_flights(options=o)}
            assert {b"item_features", b"user_features"} <= paths or {"item_features", "user_features"} <= paths, paths
            info = client.get_flight_info(cmd, o)
            assert client.get_schema(desc, o).schema.names[0] == info.schema.names[0]
            table = client.do_get(info.endpoints[0].ticket, o).read_all()
            assert table.column(0).to_pylist() == ["ai0", "ai1"], scope
            assert table.num_columns > 1
        # DoAction needs admin.
        for scope in ("read", "write"):
            with pytest.raises(fl.FlightUnauthorizedError):
                list(client.do_action(fl.Action("anything", b""), flight_opts(TOKENS[scope])))
    finally:
        client.close()


def test_flight_dead_letters_need_admin(authed):
    client = fl.connect(authed.flight_uri)
    try:
        desc = fl.FlightDescriptor.for_path("dead_letters")
        admin = flight_opts(TOKENS["admin"])
        info = client.get_flight_info(desc, admin)
        assert client.do_get(info.endpoints[0].ticket, admin).read_all().column("item_id").to_pylist() == ["late-item"]
        leaks = []
        for scope in ("read", "write"):
            o = flight_opts(TOKENS[scope])
            # Asking for a ticket, or redeeming the admin's (tickets are self-contained).
            for what, get_ticket in (("own ticket", lambda: client.get_flight_info(desc, o).endpoints[0].ticket),
                                     ("admin's ticket", lambda: info.endpoints[0].ticket)):
                try:
                    rows = client.do_get(get_ticket(), o).read_all().to_pylist()
                except fl.FlightUnauthorizedError:
                    continue
                leaks.append(f"{scope} token, {what}: {rows}")
        assert not leaks, "dead letters read over Flight below the admin scope:\n" + "\n".join(leaks)
    finally:
        client.close()


@pytest.mark.parametrize("content, fragment", [
    ("read-token-0123456789abcdef read\nwrite-token-0123456789abcdef superuser\n", ":2: scope \"superuser\""),
    ("# comment\nshorttoken admin\n", ":2: token shorter than 16 characters"),
    ("read-token-0123456789abcdef\n", ":1: want TOKEN SCOPE"),
    ("# only a comment\n\n", "no tokens"),
    ("", "no tokens"),
])
def test_bad_token_file(tmp_path, content, fragment):
    tf = tmp_path / "tokens.txt"
    tf.write_text(content)
    proc = subprocess.run([recsys_bin(), "serve", "--data.dir", str(tmp_path / "data"), "--auth.token-file", str(tf),
                           "--http.addr", f"127.0.0.1:{free_port()}", "--grpc.addr", f"127.0.0.1:{free_port()}",
                           "--flight.addr", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "auth.token-file" in out and fragment in out, out
    assert "listening" not in out, out


def test_missing_token_file(tmp_path):
    proc = subprocess.run([recsys_bin(), "serve", "--data.dir", str(tmp_path / "data"),
                           "--auth.token-file", str(tmp_path / "nope.txt"),
                           "--http.addr", f"127.0.0.1:{free_port()}", "--grpc.addr", f"127.0.0.1:{free_port()}",
                           "--flight.addr", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "auth.token-file" in proc.stderr + proc.stdout, proc


# ---------------------------------------------------------------------------
# Loopback only without tokens


def non_loopback_ipv4() -> str | None:
    """A non-loopback IPv4 address of this machine, or None."""
    addrs = []
    if shutil.which("ip"):
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
        addrs = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    else:
        try:
            addrs = socket.gethostbyname_ex(socket.gethostname())[2]
        except OSError:
            pass
    for a in addrs:
        if not a.startswith("127."):
            return a
    return None


class AnyAddrServer(Server):
    """Listeners given as :PORT (no host)."""

    @staticmethod
    def _addr(port: int) -> str:
        return f":{port}"


def reachable(host: str, port: int, token: str | None = None) -> int | None:
    """Status of GET /v1/stats at host:port, or None when the connection fails."""
    try:
        return requests.get(f"http://{host}:{port}/v1/stats", headers=bearer(token), timeout=3).status_code
    except requests.ConnectionError:
        return None


def listening_hosts(port: int) -> set[str]:
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_loopback_only_without_tokens(tmp_path):
    ip = non_loopback_ipv4()
    s = AnyAddrServer(tmp_path / "open", name="loopback-server")
    try:
        s.start()
        assert "loopback" in s.log_tail(), s.log_tail()
        assert reachable("127.0.0.1", s.http_port) == 200
        if shutil.which("ss"):
            for port in (s.http_port, s.grpc_port, s.flight_port):
                assert listening_hosts(port) == {"127.0.0.1"}, (port, listening_hosts(port))
        if ip is None:
            pytest.skip("no non-loopback address on this machine: remote reachability not checked")
        assert reachable(ip, s.http_port) is None, f"REST reachable without a token at {ip}"
        for port in (s.grpc_port, s.flight_port):
            with pytest.raises(OSError):
                socket.create_connection((ip, port), timeout=3).close()
    finally:
        s.close()


def test_remote_with_tokens_or_explicit_override(tmp_path):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    tf = write_token_file(tmp_path / "tokens.txt")
    s = AnyAddrServer(tmp_path / "tokens", ["--auth.token-file", str(tf)], name="remote-auth-server")
    try:
        s.start()
        assert reachable(ip, s.http_port) == 401
        assert reachable(ip, s.http_port, TOKENS["read"]) == 200
    finally:
        s.close()
    s = AnyAddrServer(tmp_path / "override", ["--auth.allow-unauthenticated-remote"], name="remote-open-server")
    try:
        s.start()
        assert reachable(ip, s.http_port) == 200
    finally:
        s.close()


def test_explicit_remote_addr_without_tokens_not_exposed(tmp_path):
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([recsys_bin(), "serve", "--data.dir", str(tmp_path / "data"),
                                 "--http.addr", f"{ip}:{port}", "--grpc.addr", f"127.0.0.1:{free_port()}",
                                 "--flight.addr", f"127.0.0.1:{free_port()}"],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            status = reachable(ip, port)
            if status is not None:
                break
            time.sleep(0.1)
        text = log.read_text(errors="replace")
        assert status is None, f"GET http://{ip}:{port}/v1/stats without a token -> {status}; log:\n{text}"
        if proc.poll() is not None:
            assert proc.returncode != 0 and "http.addr" in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------
# TLS and mTLS


def grpc_stats(channel, pb, timeout: float = 5):
    return pb.g.AdminServiceStub(channel).GetStats(pb.m.GetStatsRequest(), timeout=timeout)


def test_tls(tls_server_factory, pki, pb):
    s = tls_server_factory()
    ev = events("t", 10)
    r = requests.post(s.url + "/v1/events", json={"events": ev}, verify=s.ca, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 10, r.text
    r = requests.post(s.url + "/v1/features:get", json={"view": "item_features", "ids": ["ti0"]}, verify=s.ca, timeout=30)
    assert r.status_code == 200 and r.json()["entities"][0]["id"] == "ti0", r.text
    if _resolves_to_loopback_v4("localhost"):  # the DNS:localhost name of the certificate
        assert requests.get(f"https://localhost:{s.http_port}/healthz", verify=s.ca, timeout=5).status_code == 200

    # Plain http to the https port does not reach the API.
    try:
        r = requests.get(f"http://127.0.0.1:{s.http_port}/v1/stats", timeout=5)
        assert r.status_code == 400 and "log_end_offset" not in r.text, (r.status_code, r.text[:300])
    except requests.ConnectionError:
        pass
    # A client that does not trust the test CA (the system roots) refuses the server.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(s.url + "/healthz", timeout=5)

    # gRPC over TLS with the CA.
    with grpc.secure_channel(s.grpc_addr, grpc.ssl_channel_credentials(root_certificates=s.ca_pem)) as ch:
        assert grpc_stats(ch, pb).log_end_offset == 10
        assert health_check(ch) == SERVING
    with grpc.secure_channel(s.grpc_addr, grpc.ssl_channel_credentials(root_certificates=(pki / "rogue-ca.crt").read_bytes())) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            grpc_stats(ch, pb)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(s.grpc_addr) as ch:
        with pytest.raises(grpc.RpcError) as exc:
            grpc_stats(ch, pb)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE

    # Flight over grpc+tls with the CA.
    client = fl.connect(s.flight_uri, tls_root_certs=s.ca_pem)
    try:
        paths = {f.descriptor.path[0] for f in client.list_flights(options=fl.FlightCallOptions(timeout=10))}
        assert {"item_features", "user_features"} <= {p.decode() if isinstance(p, bytes) else p for p in paths}, paths
        info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps({"view": "item_features", "ids": ["ti0"]})))
        assert client.do_get(info.endpoints[0].ticket).read_all().column(0).to_pylist() == ["ti0"]
    finally:
        client.close()
    for kw in ({"tls_root_certs": (pki / "rogue-ca.crt").read_bytes()}, {}):
        client = fl.connect(s.flight_uri, **kw)
        try:
            with pytest.raises(fl.FlightError):
                list(client.list_flights(options=fl.FlightCallOptions(timeout=5)))
        finally:
            client.close()
    # Plain-text Flight to the TLS port fails as well.
    client = fl.connect(f"grpc://127.0.0.1:{s.flight_port}")
    try:
        with pytest.raises(fl.FlightError):
            list(client.list_flights(options=fl.FlightCallOptions(timeout=5)))
    finally:
        client.close()


def _resolves_to_loopback_v4(host: str) -> bool:
    try:
        return "127.0.0.1" in {ai[4][0] for ai in socket.getaddrinfo(host, None, socket.AF_INET)}
    except OSError:
        return False


def test_mtls(tls_server_factory, pki, pb):
    s = tls_server_factory(mtls=True)
    client_crt, client_key = (pki / "client.crt").read_bytes(), (pki / "client.key").read_bytes()
    rogue_crt, rogue_key = (pki / "rogue-client.crt").read_bytes(), (pki / "rogue-client.key").read_bytes()

    # REST: refused without a client certificate, or with one the CA did not sign.
    for cert in (None, (str(pki / "rogue-client.crt"), str(pki / "rogue-client.key")),
                 (str(pki / "server.crt"), str(pki / "server.key"))):
        with pytest.raises(requests.ConnectionError):  # SSLError is a ConnectionError
            requests.get(s.url + "/healthz", verify=s.ca, cert=cert, timeout=5)
    # ... and works with the client certificate.
    cert = (str(pki / "client.crt"), str(pki / "client.key"))
    r = requests.post(s.url + "/v1/events", json={"events": events("m", 5)}, verify=s.ca, cert=cert, timeout=30)
    assert r.status_code == 200 and r.json()["accepted"] == 5, r.text
    assert requests.get(s.url + "/v1/stats", verify=s.ca, cert=cert, timeout=5).json()["log_end_offset"] in ("5", 5)

    # gRPC.
    for kw in ({}, {"private_key": rogue_key, "certificate_chain": rogue_crt}):
        with grpc.secure_channel(s.grpc_addr, grpc.ssl_channel_credentials(root_certificates=s.ca_pem, **kw)) as ch:
            with pytest.raises(grpc.RpcError) as exc:
                grpc_stats(ch, pb)
            assert exc.value.code() == grpc.StatusCode.UNAVAILABLE, exc.value
    creds = grpc.ssl_channel_credentials(root_certificates=s.ca_pem, private_key=client_key, certificate_chain=client_crt)
    with grpc.secure_channel(s.grpc_addr, creds) as ch:
        assert grpc_stats(ch, pb).log_end_offset == 5
        assert health_check(ch) == SERVING

    # Flight.
    for kw in ({}, {"cert_chain": rogue_crt, "private_key": rogue_key}):
        client = fl.connect(s.flight_uri, tls_root_certs=s.ca_pem, **kw)
        try:
            with pytest.raises(fl.FlightError):
                list(client.list_flights(options=fl.FlightCallOptions(timeout=5)))
        finally:
            client.close()
    client = fl.connect(s.flight_uri, tls_root_certs=s.ca_pem, cert_chain=client_crt, private_key=client_key)
    try:
        flights = list(client.list_flights(options=fl.FlightCallOptions(timeout=10)))
        assert len(flights) >= 2
        info = client.get_flight_info(fl.FlightDescriptor.for_command(json.dumps({"view": "item_features", "ids": ["mi0"]})))
        assert client.do_get(info.endpoints[0].ticket).read_all().column(0).to_pylist() == ["mi0"]
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Overload


def test_slow_body_does_not_hold_a_slot(server_factory):
    # Bodies are read before a request takes one of the in-flight slots: two
    # clients that never finish their bodies leave both slots free.
    s = server_factory("--limits.max-in-flight", "2", "--limits.request-timeout", "1s")
    slow = []
    try:
        for _ in range(2):
            slow.append(half_sent_post(s.http_port))
        time.sleep(0.5)
        for _ in range(3):
            r = requests.get(s.url + "/v1/stats", timeout=5)
            assert r.status_code == 200, f"GET /v1/stats with two slow-body requests open -> {r.status_code} {r.text.strip()}"
        # The server's read timeout (the request timeout) ends the slow bodies.
        time.sleep(2)
        for c in slow:
            c.settimeout(5)
            assert c.recv(4096).startswith(b"HTTP/1.1 408") or c.recv(4096) == b""
    finally:
        for c in slow:
            c.close()


OVERLOAD_USERS, OVERLOAD_ITEMS, OVERLOAD_EVENTS = 300, 500, 5000


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory):
    """A server with --limits.max-in-flight 2 and a few thousand events over a few hundred items."""
    s = Server(tmp_path_factory.mktemp("overload"), ["--limits.max-in-flight", "2"], name="overload-server")
    try:
        s.start()
        evs = [{"user_id": f"ou{i % OVERLOAD_USERS}", "item_id": f"oi{(i * 7) % OVERLOAD_ITEMS}",
                "category_id": f"c{i % 13}", "behavior": ("view", "cart", "fav", "purchase")[i % 4], "ts": BASE_TS + i * 1000}
               for i in range(OVERLOAD_EVENTS)]
        for batch in chunks(evs, 1000):
            assert s.ingest(batch)["accepted"] == len(batch)  # sequential: never over the limit
        s.wait_caught_up()
        yield s
    finally:
        s.close()


def overload_ids() -> list[str]:
    return [f"oi{i}" for i in range(OVERLOAD_ITEMS)] + [f"absent{i}" for i in range(1000 - OVERLOAD_ITEMS)]


def scrape(s: Server) -> tuple[dict, int]:
    """Metrics of s, and how many 429s the scrape itself got (a just-finished request may hold its slot a moment)."""
    rejected = 0
    for _ in range(100):
        r = requests.get(s.url + "/metrics", timeout=10)
        if r.status_code == 200:
            return parse_metrics(r.text), rejected
        assert r.status_code == 429, r.status_code
        rejected += 1
        time.sleep(0.05)
    raise AssertionError("/metrics refused 100 times")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def describe(name: str, xs: list[float]) -> str:
    if not xs:
        return f"{name}: none"
    return (f"{name}: n={len(xs)} min={min(xs) * 1e3:.1f}ms p50={statistics.median(xs) * 1e3:.1f}ms "
            f"p90={pct(xs, 0.9) * 1e3:.1f}ms max={max(xs) * 1e3:.1f}ms")


def test_overload_rest(overloaded):
    s = overloaded
    clients, rounds = 64, 3
    url = s.url + "/v1/features:get"
    body = json.dumps({"view": "item_features", "ids": overload_ids()}).encode()
    headers = {"Content-Type": "application/json"}
    sessions = [requests.Session() for _ in range(clients)]
    results: list[tuple[int, float, dict, bytes]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(sess: requests.Session, barrier: threading.Barrier):
        try:
            barrier.wait(30)
            t0 = time.perf_counter()
            r = sess.post(url, data=body, headers=headers, timeout=60)
            dt = time.perf_counter() - t0
            with lock:
                results.append((r.status_code, dt, dict(r.headers), r.content))
        except Exception as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(repr(exc))

    try:
        for _ in range(rounds):
            barrier = threading.Barrier(clients)
            threads = [threading.Thread(target=one, args=(sess, barrier)) for sess in sessions]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            assert not any(t.is_alive() for t in threads), "a client thread hung"
    finally:
        for sess in sessions:
            sess.close()
    assert not errors, errors[:5]
    assert len(results) == clients * rounds

    statuses = {}
    for st, *_ in results:
        statuses[st] = statuses.get(st, 0) + 1
    ok = [(dt, c) for st, dt, _, c in results if st == 200]
    rejected = [(dt, h, c) for st, dt, h, c in results if st == 429]
    print(f"\nREST statuses over {rounds} rounds of {clients} concurrent features:get (1000 ids): {statuses}")
    print(describe("  200", [dt for dt, _ in ok]))
    print(describe("  429", [dt for dt, _, _ in rejected]))
    assert set(statuses) <= {200, 429}, f"statuses other than 200 and 429: {statuses}"
    assert ok, f"no request was served: {statuses}"
    assert rejected, f"no request was refused with max-in-flight 2: {statuses}"

    for _, c in ok[:3]:
        assert len(json.loads(c)["entities"]) == 1000
    for _, h, c in rejected:
        b = json.loads(c)
        assert b["code"] == 8 and b["message"], b
        assert h.get("Retry-After", "").strip().isdigit() and int(h["Retry-After"]) >= 1, h

    metrics, scrape_429 = scrape(s)
    counter = metric(metrics, "recsys_server_overload_rejections_total", listener="http")
    assert counter == len(rejected) + scrape_429, (counter, len(rejected), scrape_429)
    assert metric(metrics, "recsys_server_request_duration_seconds_count",
                  listener="http", method="POST /v1/features:get", code="429") == len(rejected)
    assert metric(metrics, "recsys_server_request_duration_seconds_count",
                  listener="http", method="POST /v1/features:get", code="200") == len(ok)

    assert statistics.median(dt for dt, _, _ in rejected) < statistics.median(dt for dt, _ in ok), \
        "refused requests are not answered faster than served ones"

    rss = metric(metrics, "process_resident_memory_bytes")
    print(f"  process_resident_memory_bytes after the burst: {rss / 2**20:.0f} MiB")
    assert 0 < rss < 2**30, rss


def test_overload_grpc(overloaded, pb):
    s = overloaded
    stub = pb.g.FeatureServiceStub(s.channel())
    req = pb.m.GetFeaturesRequest(view="item_features", ids=overload_ids())
    stub.GetFeatures(req, timeout=30)  # warm the channel; alone, never refused
    before, _ = scrape(s)
    calls, rounds = 64, 3
    codes: list[grpc.StatusCode] = []
    latencies: dict[str, list[float]] = {}
    for _ in range(rounds):
        done_at: dict[int, float] = {}
        t0 = time.perf_counter()
        futures = [stub.GetFeatures.future(req, timeout=60) for _ in range(calls)]
        for f in futures:
            f.add_done_callback(lambda fut: done_at.__setitem__(id(fut), time.perf_counter()))
        for f in futures:
            try:
                resp = f.result()
                assert len(resp.entities) == 1000
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "too many requests" in exc.details(), exc.details()
            codes.append(code)
        for f in futures:  # callbacks may run a moment after result() returns
            poll_until = time.monotonic() + 5
            while id(f) not in done_at and time.monotonic() < poll_until:
                time.sleep(0.01)
            latencies.setdefault(f.code().name, []).append(done_at.get(id(f), time.perf_counter()) - t0)
    counts = {c.name: codes.count(c) for c in set(codes)}
    print(f"\ngRPC codes over {rounds} rounds of {calls} concurrent GetFeatures (1000 ids): {counts}")
    for name, xs in latencies.items():
        print(describe(f"  {name} (from the first send)", xs))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, counts
    assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, counts

    after, _ = scrape(s)
    name = "recsys_server_overload_rejections_total"
    n_exhausted = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert metric(after, name, listener="grpc") - metric(before, name, listener="grpc") == n_exhausted
    dur = "recsys_server_request_duration_seconds_count"
    m = "/recsys.v1.FeatureService/GetFeatures"
    assert (metric(after, dur, listener="grpc", method=m, code="ResourceExhausted")
            - metric(before, dur, listener="grpc", method=m, code="ResourceExhausted")) == n_exhausted
    assert (metric(after, dur, listener="grpc", method=m, code="OK")
            - metric(before, dur, listener="grpc", method=m, code="OK")) == codes.count(grpc.StatusCode.OK)
    assert metric(after, "process_resident_memory_bytes") < 2**30


def test_dashboard_metrics_exported(server):
    """Every metric the Grafana dashboard queries is one /metrics exports
    (after some traffic: labelled families appear with their first
    sample), so a renamed metric cannot leave a panel silently empty."""
    rng = random.Random(3)
    from test_window_state import BASE_TS, events
    evs = events(rng, 200, BASE_TS)
    assert server.ingest(evs)["accepted"] == len(evs)
    server.wait_caught_up()
    u, i = evs[0]["user_id"], evs[0]["item_id"]
    assert server.post("/v1/features:get", json={"view": "item_features", "ids": [i]}).status_code == 200
    assert server.get(f"/v1/users/{u}/recommendations?k=5").status_code == 200
    dash = json.loads((Path(__file__).parent.parent / "serving/dashboards/recsys.json").read_text())
    queried = set()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            queried |= set(re.findall(r"\b((?:recsys|go|process)_[a-z0-9_]+)", t["expr"]))
    text = server.get("/metrics").text
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    # Only an overload, which this test does not cause, makes the first
    # sample of this one (test_overload_rest checks it).
    on_event = {"recsys_server_overload_rejections_total"}
    missing = sorted(n for n in queried - on_event if re.sub(r"_(bucket|count|sum)$", "", n) not in exported)
    assert not missing, missing
    assert len(queried) > 20, queried
