"""Bad input to the ingest API (REST and gRPC), against one server whose limits
are lowered so that they are cheap to reach. Whatever is thrown at it, the
server keeps answering and no accepted event is lost or counted twice: a
ledger of every accepted event is checked against the server at the end."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import grpc
import pytest

from conftest import COUNT_FEATURES, Server

MAX_BATCH = 100
MAX_BODY = 8192  # large enough for 100 small events, small enough to exceed cheaply
BASE_TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
CANON = {"pv": "view", "buy": "purchase"}


class Ledger:
    """What the server must hold: distinct accepted events and counts per user."""

    def __init__(self):
        self.keys: set = set()
        self.users: dict[str, dict] = defaultdict(lambda: dict.fromkeys(COUNT_FEATURES, 0))

    def add(self, events):
        for e in events:
            b = CANON.get(e["behavior"], e["behavior"])
            key = (str(e["user_id"]), str(e["item_id"]), str(e.get("category_id", "")), b, e["ts"])
            if key in self.keys:
                continue
            self.keys.add(key)
            self.users[str(e["user_id"])][f"{b}_count"] += 1


@pytest.fixture(scope="module")
def ledger():
    return Ledger()


@pytest.fixture(scope="module")
def srv(tmp_path_factory, ledger):
    s = Server(tmp_path_factory.mktemp("bad-input"), ["--ingest.max-batch", str(MAX_BATCH),
                                                      "--ingest.max-body-bytes", str(MAX_BODY)], name="bad-input-server")
    try:
        s.start()
        baseline = [ev(f"base-u{i % 5}", f"base-i{i % 7}", ["view", "cart", "fav", "purchase"][i % 4], BASE_TS + i)
                    for i in range(60)]
        assert s.ingest(baseline) == {"accepted": 60, "rejected": []}
        ledger.add(baseline)
        yield s
    finally:
        s.close()


def ev(user="u1", item="i1", behavior="view", ts=BASE_TS, **extra):
    return {"user_id": user, "item_id": item, "behavior": behavior, "ts": ts, **extra}


def now_ms():
    return int(time.time() * 1000)


def user_counts(s: Server, users):
    r = s.post("/v1/features:get", json={"view": "user_features", "ids": list(users), "features": list(COUNT_FEATURES)})
    assert r.status_code == 200, r.text
    return {e["id"]: {f["name"]: f["value"] for f in e["features"]} for e in r.json()["entities"]}


def assert_bad_request(r, field: str, fragment: str = ""):
    """400, grpc-gateway error body with code 3 (INVALID_ARGUMENT), message and details naming field.

    A field ending in "." only has to prefix the named field."""
    assert r.status_code == 400, f"{r.status_code} {r.text[:500]}"
    body = r.json()
    assert body["code"] == 3, body
    named = body["message"].split(":", 1)[0]
    assert named == field or (field.endswith(".") and named.startswith(field)), \
        f"message {body['message']!r} does not name {field!r}"
    assert fragment in body["message"], f"{fragment!r} not in {body['message']!r}"
    violations = [v["field"] for d in body.get("details", []) for v in d.get("field_violations", [])]
    assert named in violations, f"no field violation for {named!r}: {body['details']}"


# -- whole request rejected: 400 and nothing written --------------------------

LONG_ID = "x" * 257
MULTIBYTE_LONG_ID = "é" * 128 + "x"  # 129 characters, 257 bytes

BAD_BODIES = {
    "malformed_json": ('{"events": [', "body", "invalid JSON"),
    "not_json": ("hello", "body", "invalid JSON"),
    "empty_body": ("", "body", "invalid JSON"),
    "array_body": ("[1, 2]", "body", ""),
    "string_body": ('"events"', "body", ""),
    "number_body": ("42", "body", ""),
    "trailing_data": (json.dumps({"events": [ev()]}) + " {}", "body", ""),
    "unknown_top_level_field": (json.dumps({"events": [ev()], "extra": 1}), "body", "unknown field"),
    "events_missing": ("{}", "events", "required"),
    "events_null": ('{"events": null}', "events", "required"),
    "events_empty": ('{"events": []}', "events", ""),
    "events_not_a_list": ('{"events": {}}', "events", "array"),
    "unknown_behavior": (json.dumps({"events": [ev(behavior="click")]}), "events[0].behavior", '"click"'),
    "behavior_wrong_case": (json.dumps({"events": [ev(behavior="VIEW")]}), "events[0].behavior", ""),
    "behavior_missing": (json.dumps({"events": [{"user_id": "u", "item_id": "i", "ts": BASE_TS}]}), "events[0].behavior", ""),
    "empty_user_id": (json.dumps({"events": [ev(user="")]}), "events[0].user_id", "required"),
    "user_id_missing": (json.dumps({"events": [{"item_id": "i", "behavior": "view", "ts": BASE_TS}]}), "events[0].user_id", ""),
    "empty_item_id": (json.dumps({"events": [ev(item="")]}), "events[0].item_id", "required"),
    "item_id_257_bytes": (json.dumps({"events": [ev(item=LONG_ID)]}), "events[0].item_id", "257"),
    "item_id_257_utf8_bytes": (json.dumps({"events": [ev(item=MULTIBYTE_LONG_ID)]}, ensure_ascii=False), "events[0].item_id", "257"),
    "category_id_257_bytes": (json.dumps({"events": [ev(category_id=LONG_ID)]}), "events[0].category_id", "257"),
    "event_id_257_bytes": (json.dumps({"events": [ev(event_id=LONG_ID)]}), "events[0].event_id", "257"),
    "user_id_control_char": (json.dumps({"events": [ev(user="a\u0001b")]}), "events[0].user_id", ""),
    "user_id_bool": (json.dumps({"events": [ev(user=True)]}), "events[0].user_id", ""),
    "user_id_object": (json.dumps({"events": [ev(user={"id": 1})]}), "events[0].user_id", ""),
    "user_id_fraction": (json.dumps({"events": [ev(user=1.5)]}), "events[0].user_id", ""),
    "ts_non_numeric": (json.dumps({"events": [ev(ts="abc")]}), "events[0].ts", '"abc"'),
    "ts_fraction": (json.dumps({"events": [ev(ts=1.5e12)]}), "events[0].ts", ""),
    "ts_bool": (json.dumps({"events": [ev(ts=True)]}), "events[0].ts", ""),
    "ts_missing": (json.dumps({"events": [{"user_id": "u", "item_id": "i", "behavior": "view"}]}), "events[0].ts", ""),
    "ts_seconds": (json.dumps({"events": [ev(ts=BASE_TS // 1000)]}), "events[0].ts",
                   "before 1971-01-01 (Unix milliseconds expected, not seconds)"),
    "ts_negative": (json.dumps({"events": [ev(ts=-1)]}), "events[0].ts", "before 1971-01-01"),
    "ts_1970_06": (json.dumps({"events": [ev(ts=13_046_400_000)]}), "events[0].ts", "before 1971-01-01"),
    "ts_before_1971_rfc3339": (json.dumps({"events": [ev(ts="1970-12-31T23:59:59Z")]}), "events[0].ts", "before 1971-01-01"),
    "ts_overflow": (json.dumps({"events": [ev(ts=10**30)]}), "events[0].ts", ""),
    "unknown_event_field": (json.dumps({"events": [ev(foo=1)]}), "events[0].foo", "unknown field"),
    "event_not_object": ('{"events": [1]}', "events[0]", "not a JSON object"),
    "second_of_two_invalid": (json.dumps({"events": [ev(user=""), ev(behavior="zz")]}), "events[0].user_id", ""),
    "batch_over_limit": (json.dumps({"events": [ev(f"lim{i}", ts=BASE_TS + i) for i in range(MAX_BATCH + 1)]}),
                         "events", f"batch of {MAX_BATCH + 1} events exceeds the limit of {MAX_BATCH}"),
    "body_over_limit": (json.dumps({"events": [ev(f"big{i}", ts=BASE_TS + i, category_id="c" * 200) for i in range(40)]}),
                        "body", f"exceeds the limit of {MAX_BODY} bytes"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_whole_request_rejected(srv, case):
    body, field, fragment = BAD_BODIES[case]
    if case == "body_over_limit":
        assert len(body.encode()) > MAX_BODY
    before = srv.stats()
    r = srv.post("/v1/events", data=body.encode(), headers={"Content-Type": "application/json"})
    assert_bad_request(r, field, fragment)
    after = srv.stats()
    assert after["log_end_offset"] == before["log_end_offset"], "a rejected request wrote to the log"


def test_future_ts_rejected(srv):
    for ts in (now_ms() + 10 * 60 * 1000, now_ms() + 86_400_000, 32_503_680_000_000):  # +10 min, +1 day, year 3000
        r = srv.post("/v1/events", json={"events": [ev("future-u", ts=ts)]})
        assert_bad_request(r, "events[0].ts", "future")


def test_near_future_ts_within_skew_accepted(srv, ledger):
    e = ev("skew-u", ts=now_ms() + 60_000)  # one minute ahead: inside the 5 minute allowance
    assert srv.ingest([e]) == {"accepted": 1, "rejected": []}
    ledger.add([e])


def test_limits_inclusive(srv, ledger):
    """Exactly MAX_BATCH events, and a body of exactly MAX_BODY bytes, are accepted."""
    events = [ev(f"lim-u{i % 10}", f"lim-i{i}", ts=BASE_TS + i) for i in range(MAX_BATCH)]
    body = json.dumps({"events": events}, separators=(",", ":"))
    assert len(body) <= MAX_BODY
    r = srv.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"accepted": MAX_BATCH, "rejected": []}, r.text[:500]
    ledger.add(events)

    e = ev("lim-body-u", ts=BASE_TS + 1)
    body = json.dumps({"events": [e]})
    body = body[:-1] + " " * (MAX_BODY - len(body)) + "}"
    assert len(body) == MAX_BODY
    r = srv.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "rejected": []}, r.text[:500]
    ledger.add([e])
    r = srv.post("/v1/events", data=body[:-1] + " }", headers={"Content-Type": "application/json"})
    assert_bad_request(r, "body", "exceeds the limit")


# -- partial batches: 200, valid events accepted, invalid ones listed ---------

REJECTIONS = {
    "missing": (ev(user=""), "user_id"),
    "too_long": (ev(item=LONG_ID), "item_id"),
    "control_character": (ev(item="a\nb"), "item_id"),
    "unknown_behavior": (ev(behavior="click"), "behavior"),
    "too_old": (ev(ts=BASE_TS // 1000), "ts"),
    "future": (ev(ts=32_503_680_000_000), "ts"),
    "malformed": (ev(ts="abc"), "ts"),
    "unknown_field": (ev(colour="red"), "colour"),
}


@pytest.mark.parametrize("code", list(REJECTIONS))
def test_rejection_codes(srv, ledger, code):
    bad, field = REJECTIONS[code]
    good = ev(f"rej-{code}", "rej-i", ts=BASE_TS + 7)
    body = srv.ingest([good, bad])
    assert body["accepted"] == 1
    assert len(body["rejected"]) == 1, body
    rej = body["rejected"][0]
    assert (rej["index"], rej["field"], rej["code"]) == (1, field, code), rej
    assert rej["reason"].startswith(field + ":"), rej
    ledger.add([good])


def test_rejection_code_invalid_utf8(srv, ledger):
    good = ev("rej-utf8", "rej-i", ts=BASE_TS + 7)
    body = ('{"events": [' + json.dumps(good) + ', {"user_id": "a').encode() + b"\xff" + \
        b'b", "item_id": "i", "behavior": "view", "ts": 1767225600000}]}'
    r = srv.post("/v1/events", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    ledger.add([good])
    if r.json()["accepted"] == 2:  # the mangled event got in: keep the ledger true to the server
        ledger.add([ev("a\ufffdb", "i")])
    assert [(x["index"], x["field"], x["code"]) for x in r.json()["rejected"]] == [(1, "user_id", "invalid_utf8")], r.text


def test_mixed_batch(srv, ledger):
    events = [
        ev("mixed-u1", "mixed-i1", "cart", BASE_TS + 100),
        ev("mixed-u1", "mixed-i2", "dance", BASE_TS + 101),
        ev("mixed-u2", "mixed-i1", "purchase", BASE_TS + 102, category_id="mixed-c"),
        ev("mixed-u2", "", "view", BASE_TS + 103),
    ]
    body = srv.ingest(events)
    assert body["accepted"] == 2
    assert [(r["index"], r["field"], r["code"]) for r in body["rejected"]] == [
        (1, "behavior", "unknown_behavior"), (3, "item_id", "missing")]
    ledger.add([events[0], events[2]])
    srv.wait_caught_up()
    got = user_counts(srv, ["mixed-u1", "mixed-u2"])
    assert got["mixed-u1"] == {**dict.fromkeys(COUNT_FEATURES, 0), "cart_count": 1}
    assert got["mixed-u2"] == {**dict.fromkeys(COUNT_FEATURES, 0), "purchase_count": 1}


# -- accepted spellings ---------------------------------------------------------

def test_rfc3339_and_string_ts(srv, ledger):
    cases = [
        ("2026-01-01T00:00:00Z", BASE_TS),
        ("2026-01-01T00:00:00.123Z", BASE_TS + 123),
        ("2026-01-01T02:00:00+02:00", BASE_TS),
        (str(BASE_TS + 5), BASE_TS + 5),
    ]
    for n, (ts, want) in enumerate(cases):
        user = f"rfc-u{n}"
        assert srv.ingest([ev(user, "rfc-i", ts=ts)]) == {"accepted": 1, "rejected": []}
        ledger.add([ev(user, "rfc-i", ts=want)])
    srv.wait_caught_up()
    r = srv.post("/v1/features:get", json={"view": "user_features", "ids": [f"rfc-u{n}" for n in range(len(cases))],
                                           "features": ["first_event_ts", "view_count"]})
    assert r.status_code == 200, r.text
    got = [{f["name"]: f["value"] for f in e["features"]} for e in r.json()["entities"]]
    assert got == [{"first_event_ts": want, "view_count": 1} for _, want in cases]


def test_aliases_and_integer_ids(srv, ledger):
    events = [ev(424242, 777, "pv", BASE_TS + 1), ev(424242, 777, "buy", BASE_TS + 2),
              ev(424242, 778, "view", BASE_TS + 3)]
    assert srv.ingest(events) == {"accepted": 3, "rejected": []}
    ledger.add(events)
    # The alias spells the same event as the canonical name: no double count.
    assert srv.ingest([ev(424242, 777, "view", BASE_TS + 1)])["accepted"] == 1
    srv.wait_caught_up()
    assert user_counts(srv, ["424242"])["424242"] == {"view_count": 2, "cart_count": 0, "fav_count": 0, "purchase_count": 1}
    r = srv.get("/v1/items/777/features")
    assert {f["name"]: f["value"] for f in r.json()["features"]}["purchase_count"] == 1


def test_resent_batch_counted_once(srv, ledger):
    events = [ev(f"resend-u{i % 3}", f"resend-i{i}", ["view", "fav"][i % 2], BASE_TS + i) for i in range(30)]
    events.append(dict(events[0]))  # an exact duplicate inside the batch too
    before = srv.wait_caught_up()
    for _ in range(3):
        assert srv.ingest(events) == {"accepted": len(events), "rejected": []}
    ledger.add(events)
    after = srv.wait_caught_up()
    assert after["events_applied"] - before["events_applied"] == 30
    assert after["duplicates_skipped"] - before["duplicates_skipped"] == 3 * 31 - 30
    got = user_counts(srv, [f"resend-u{i}" for i in range(3)])
    for u in range(3):
        assert got[f"resend-u{u}"] == ledger.users[f"resend-u{u}"]


def test_explicit_event_id_dedup(srv, ledger):
    e = ev("eid-u", "eid-i", "cart", BASE_TS, event_id="order-42")
    assert srv.ingest([e])["accepted"] == 1
    assert srv.ingest([e])["accepted"] == 1
    ledger.add([e])
    srv.wait_caught_up()
    assert user_counts(srv, ["eid-u"])["eid-u"]["cart_count"] == 1


# -- gRPC -----------------------------------------------------------------------

def grpc_event(pb, **kw):
    base = dict(user_id="g-u", item_id="g-i", behavior="view", ts=BASE_TS)
    base.update(kw)
    return pb.m.Event(**base)


GRPC_BAD = {
    "unknown_behavior": ({"behavior": "click"}, "events[0].behavior"),
    "empty_user_id": ({"user_id": ""}, "events[0].user_id"),
    "empty_item_id": ({"item_id": ""}, "events[0].item_id"),
    "item_id_257_bytes": ({"item_id": LONG_ID}, "events[0].item_id"),
    "user_id_control_char": ({"user_id": "a\tb"}, "events[0].user_id"),
    "ts_seconds": ({"ts": BASE_TS // 1000}, "events[0].ts"),
    "ts_zero": ({"ts": 0}, "events[0].ts"),
    "ts_future": ({"ts": 32_503_680_000_000}, "events[0].ts"),
}


@pytest.mark.parametrize("case", list(GRPC_BAD))
def test_grpc_invalid_argument(srv, pb, case):
    kw, field = GRPC_BAD[case]
    stub = pb.g.EventServiceStub(srv.channel())
    before = srv.stats()["log_end_offset"]
    with pytest.raises(grpc.RpcError) as exc:
        stub.Ingest(pb.m.IngestRequest(events=[grpc_event(pb, **kw)]), timeout=10)
    err = exc.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith(field + ":"), err.details()
    assert any(f == field for f, _ in pb.field_violations(err)), pb.field_violations(err)
    # Nothing is appended but a future event's dead letter (kept in the log, like events).
    assert srv.stats()["log_end_offset"] == before + (case == "ts_future")


def test_grpc_batch_limits(srv, pb):
    stub = pb.g.EventServiceStub(srv.channel())
    for events, field in (([], "events"),
                          ([grpc_event(pb, user_id=f"glim{i}", ts=BASE_TS + i) for i in range(MAX_BATCH + 1)], "events")):
        with pytest.raises(grpc.RpcError) as exc:
            stub.Ingest(pb.m.IngestRequest(events=events), timeout=10)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details().startswith(field + ":"), exc.value.details()


def test_grpc_mixed_batch(srv, pb, ledger):
    stub = pb.g.EventServiceStub(srv.channel())
    resp = stub.Ingest(pb.m.IngestRequest(events=[
        grpc_event(pb, user_id="g-mixed", item_id="g-i1", behavior="fav", ts=BASE_TS + 1),
        grpc_event(pb, user_id="g-mixed", behavior="nope"),
        grpc_event(pb, user_id="g-mixed", item_id="g-i2", behavior="buy", ts=BASE_TS + 2),
    ]), timeout=10)
    assert resp.accepted == 2
    assert [(r.index, r.field, r.code) for r in resp.rejected] == [(1, "behavior", "unknown_behavior")]
    ledger.add([ev("g-mixed", "g-i1", "fav", BASE_TS + 1), ev("g-mixed", "g-i2", "buy", BASE_TS + 2)])
    # The same events over REST are duplicates of the gRPC ones.
    assert srv.ingest([ev("g-mixed", "g-i1", "fav", BASE_TS + 1)])["accepted"] == 1


def test_feature_requests_rejected(srv, pb):
    for body, field in (({"view": "bogus", "ids": ["a"]}, "view"),
                        ({"view": "user_features", "ids": []}, "ids"),
                        ({"view": "user_features", "ids": ["a"], "features": ["nope"]}, "features"),
                        ({"view": "item_features", "ids": ["a"], "features": ["recent_items"]}, "features"),
                        ({"view": "user_features", "ids": [str(i) for i in range(1001)]}, "ids")):
        assert_bad_request(srv.post("/v1/features:get", json=body), field)
    r = srv.post("/v1/features:get", data=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == 3, r.text


@pytest.mark.parametrize("path,field", [("/v1/users/a%FFb/features", "user_id"), ("/v1/items/a%FFb/features", "item_id"),
                                        ("/v1/users/a%FFb/recommendations", "user_id"),
                                        ("/v1/users/" + "x" * 257 + "/features", "user_id")])
def test_bad_path_id_is_client_error(srv, path, field):
    """Ids on read paths follow the ingest rules: 400, not a 500 or a silent miss."""
    assert_bad_request(srv.get(path), field)


# -- after all of it ------------------------------------------------------------

def test_zz_nothing_lost(srv, ledger):
    """Runs last: the server still answers and holds exactly the accepted events."""
    assert srv.running
    assert srv.get("/healthz").status_code == 200
    st = srv.wait_caught_up()
    assert st["events_applied"] == len(ledger.keys), st
    got = user_counts(srv, sorted(ledger.users))
    wrong = {u: (got[u], want) for u, want in ledger.users.items() if got[u] != want}
    assert not wrong, wrong
    assert st["users"] == len(ledger.users), st
