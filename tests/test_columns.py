"""features:get with "format": "columns" through the real binary, REST and
gRPC: the same values, statuses and event times as the rows answer (which
stays as it was), for every feature of every view, entities in every state
(unknown, past the TTL, read as of the past, without a category, rates of
NaN and +Inf), in a fifth of the bytes; bad formats answered with the field
and the reason."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import pytest

from conftest import REPO, Server

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the newest event, the clock (event clock)
HOUR, DAY = 3_600_000, 86_400_000
ODD_USER = 'u"q\\ü/中😀\u2028<&>'
ODD_CAT = 'c/1"\\'
DIGITS = "9" * 256


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("columns")
    # The default views (TTL 7 days) and an item rate without prior: 0/0 is
    # NaN, 1/0 is +Inf.
    text = (REPO / "featurestore/features.yaml").read_text()
    text, n = re.subn(r"(\n( +)- \{name: distinct_users_24h[^\n]*)",
                      r"\1\n\2- {name: cart_per_view_24h, agg: rate, numerator: cart, denominator: view, window: 24h, "
                      r"prior_mean: 0, prior_strength: 0}", text)
    assert n == 1
    (d / "features.yaml").write_text(text)
    s = Server(d, ["--features", str(d / "features.yaml")], name="columns")
    s.start()
    ev = lambda u, i, c, b, ts: {"user_id": u, "item_id": i, "category_id": c, "behavior": b, "ts": ts}  # noqa: E731
    evs = [ev("stale", "i-stale", "c-stale", "view", T - 7 * DAY - 12 * HOUR),  # past the TTL: expired
           ev(ODD_USER, "i1", ODD_CAT, "view", T - 2 * HOUR),
           ev(ODD_USER, "i1", ODD_CAT, "purchase", T - HOUR),
           ev(DIGITS, "i1", ODD_CAT, "view", T - 500),
           ev(DIGITS, "i2", "", "cart", T - 400),  # no category; 1 cart / 0 views
           ev(ODD_USER, "i3", "c2", "fav", T - 300),  # 0 carts / 0 views
           ev("u-views", "i1", ODD_CAT, "view", T)]
    for e in evs:  # in time order, one by one: the stale event comes first
        assert s.ingest([e])["accepted"] == 1
    s.wait_caught_up()
    yield s
    s.close()


def post(s: Server, body: dict):
    r = s.post("/v1/features:get", json=body)
    assert r.headers["Content-Type"] == "application/json"
    return r


def ms(rfc3339: str | None) -> int | None:
    if rfc3339 is None:
        return None
    t = dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


def statuses_of(entities) -> list[tuple]:
    """The sparse status list the rows answer implies."""
    out = []
    for r, e in enumerate(entities):
        st = {f["status"] for f in e["features"]}
        if len(st) == 1:
            if st != {"present"}:
                out.append((r, None, st.pop()))
            continue
        out += [(r, f["name"], f["status"]) for f in e["features"] if f["status"] != "present"]
    return out


def same_number(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def compare(srv, pb, body: dict) -> dict:
    """Asks body as rows and as columns over REST and gRPC; they must agree. Returns counts of statuses seen."""
    rows = post(srv, body)
    assert rows.status_code == 200, rows.text
    cols = post(srv, {**body, "format": "columns"})
    assert cols.status_code == 200, cols.text
    r, c = rows.json(), cols.json()
    assert list(c) == ["view", "ids", "features", "columns", "event_time_ms", "status"]
    ents = r["entities"]
    names = [f["name"] for f in ents[0]["features"]]
    assert c["view"] == r["view"] == body["view"] and c["ids"] == body["ids"] == [e["id"] for e in ents]
    assert c["features"] == names == list(c["columns"]) == list(c["event_time_ms"])
    want_status = statuses_of(ents)
    assert [(s["id_index"], s.get("feature"), s["status"]) for s in c["status"]] == want_status
    for j, name in enumerate(names):
        assert [e["features"][j]["value"] for e in ents] == c["columns"][name], name
        assert [ms(e["features"][j]["event_time"]) for e in ents] == c["event_time_ms"][name], name

    req = pb.m.GetFeaturesRequest(view=body["view"], ids=body["ids"], features=body.get("features", []),
                                  as_of=body.get("as_of", 0), format="columns")
    g = pb.g.FeatureServiceStub(srv.channel()).GetFeatures(req, timeout=30)
    assert len(g.entities) == 0 and g.view == body["view"] and list(g.columns.ids) == body["ids"]
    assert [(s.id_index, s.feature or None, s.status) for s in g.columns.status] == want_status
    types = {f["name"]: f["type"] for v in srv.get("/v1/feature-views").json()["views"] if v["name"] == body["view"]
             for f in v["features"]}
    for j, col in enumerate(g.columns.columns):
        assert col.name == names[j] and col.type == types[col.name]
        assert list(col.event_time_ms) == [t or 0 for t in c["event_time_ms"][col.name]]
        rest = c["columns"][col.name]
        if col.type in ("int64", "timestamp_ms"):
            got = list(col.int64_values)
        elif col.type == "float64":
            got = list(col.double_values)
        elif col.type == "string":
            got = list(col.string_values)
        else:
            off = list(col.list_offsets)
            assert len(off) == len(rest) + 1 and off[0] == 0 and off[-1] == len(col.list_values)
            got = [list(col.list_values[off[i]:off[i + 1]]) for i in range(len(rest))]
        assert len(got) == len(rest)
        for i, (gv, rv) in enumerate(zip(got, rest)):
            present = next((s for s in want_status if s[0] == i and s[1] in (None, col.name)), None) is None
            if not present:
                assert gv in (0, "", []), (col.name, i, gv)
            elif rv is None:  # a number that is not finite: null over REST
                assert col.type == "float64" and not math.isfinite(gv), (col.name, i, gv)
            else:
                assert same_number(gv, rv), (col.name, i, gv, rv)
    seen = {}
    for e in ents:
        for f in e["features"]:
            seen[f["status"]] = seen.get(f["status"], 0) + 1
    for s in want_status:
        key = ("entity " if s[1] is None else "value ") + s[2]
        seen[key] = seen.get(key, 0) + 1
    return seen


USERS = [ODD_USER, "stale", "nobody", DIGITS, ODD_USER, "u-views"]
ITEMS = ["i1", "i2", "i3", "i-stale", "nobody"]


def test_columns_match_rows(srv, pb):
    seen: dict[str, int] = {}
    for body in [
        {"view": "user_features", "ids": USERS},
        {"view": "item_features", "ids": ITEMS},
        {"view": "item_features", "ids": ITEMS, "features": ["category_id", "cart_per_view_24h", "view_count"]},
        {"view": "user_features", "ids": USERS, "as_of": T - 1000},  # before the newest events: not_versioned
        {"view": "item_features", "ids": ITEMS, "as_of": T - 1000, "features": ["view_count", "last_event_ts"]},
        {"view": "user_features", "ids": USERS, "as_of": T - 8 * DAY},  # windows past the TTL: expired
        {"view": "category_features", "ids": [ODD_CAT, "c2", "nocat"]},
        {"view": "category_features", "ids": [ODD_CAT], "as_of": T - 9 * DAY},
    ]:
        for k, n in compare(srv, pb, body).items():
            seen[k] = seen.get(k, 0) + n
    for k in ("present", "entity not_found", "entity expired", "entity not_versioned",
              "value not_found", "value expired", "value not_versioned"):
        assert seen.get(k), (k, seen)


def test_non_finite_rates(srv, pb):
    body = {"view": "item_features", "ids": ["i2", "i3", "i1"], "features": ["cart_per_view_24h"], "format": "columns"}
    c = post(srv, body).json()
    assert c["columns"] == {"cart_per_view_24h": [None, None, 0]} and c["status"] == []
    g = pb.g.FeatureServiceStub(srv.channel()).GetFeatures(pb.m.GetFeaturesRequest(**body), timeout=30)
    v = list(g.columns.columns[0].double_values)
    assert v[0] == math.inf and math.isnan(v[1]) and v[2] == 0


def test_columns_are_smaller(srv):
    ids = [f"i{k}" for k in range(1, 4)] * 100 + ["nobody"] * 100
    rows = post(srv, {"view": "item_features", "ids": ids}).content
    cols = post(srv, {"view": "item_features", "ids": ids, "format": "columns"}).content
    assert len(cols) < 0.25 * len(rows), (len(cols), len(rows))
    # The rows answer is unchanged with format rows or "".
    for f in ("rows", ""):
        assert post(srv, {"view": "item_features", "ids": ids, "format": f}).content == rows
    json.loads(cols)


@pytest.mark.parametrize("body,field,fragment", [
    ({"format": "xml"}, "format", '"xml" is not rows or columns (empty: rows)'),
    ({"format": "Columns"}, "format", "is not rows or columns"),
    ({"format": 3}, None, "format"),
    ({"format": "columns", "features": ["view_count", "view_count"]}, "features", '"view_count" is named twice'),
    ({"format": "columns", "features": ["nope"]}, "features", 'unknown feature "nope"'),
    ({"format": "columns", "ids": []}, "ids", "required"),
    ({"format": "columns", "as_of": 1_700_000_000}, "as_of", "Unix seconds?"),
])
def test_bad_requests(srv, pb, body, field, fragment):
    import grpc
    full = {"view": "item_features", "ids": ["i1"], **body}
    r = post(srv, full)
    assert r.status_code == 400, r.text
    msg = r.json()["message"]
    assert fragment in msg and (field is None or msg.startswith(field + ": ")), msg
    if field is None:  # not a request gRPC can carry
        return
    with pytest.raises(grpc.RpcError) as exc:
        pb.g.FeatureServiceStub(srv.channel()).GetFeatures(pb.m.GetFeaturesRequest(**full), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in exc.value.details()
    assert [f for f, _ in pb.field_violations(exc.value)] == [field]
