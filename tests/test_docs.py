"""The README's examples and the notebooks run as written against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from conftest import REPO, code_blocks


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    from conftest import Server
    s = Server(tmp_path_factory.mktemp("docs"), ["--demo", "--demo.events", "30000"], name="docs")
    s.start()
    s.wait_caught_up(min_log_end=30_000)
    yield s
    s.close()


def readme_blocks(lang: str) -> list[str]:
    return code_blocks((REPO / "README.md").read_text(), lang)


def localize(code: str, s) -> str:
    return (code.replace("localhost:8080", f"127.0.0.1:{s.http_port}")
                .replace("localhost:8815", f"127.0.0.1:{s.flight_port}"))


def test_readme_curl_examples(demo_server):
    # Pipelines are the quick start's (tests/test_quickstart.py runs them).
    curls = [line for block in readme_blocks("sh") for line in block.splitlines() if line.startswith("curl ") and "|" not in line]
    assert len(curls) >= 3, curls
    for line in curls:
        res = subprocess.run(["bash", "-c", localize(line, demo_server) + " --silent --show-error --fail-with-body"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"{line}\n-> exit {res.returncode}: {res.stdout}{res.stderr}"
        body = json.loads(res.stdout)
        if "/v1/events" in line:
            assert body["accepted"] == 1 and body["rejected"] == [], body
        if "/recommendations" in line:
            assert len(body["items"]) == 10, body
        if line.endswith("/features"):
            assert {f["name"] for f in body["features"]} >= {"view_count", "recent_items"}, body
            assert all(f["status"] == "present" for f in body["features"] if f["name"] == "view_count"), body


def test_readme_python_examples(demo_server, capsys):
    blocks = readme_blocks("python")
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(localize(block, demo_server), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "[b'user_features']" in out and "[b'item_features']" in out, out
    assert "'item_id': 'i42'" in out, out
    assert "'label': [1, 0]" in out, out
    # The Python client section.
    assert re.search(r"item_id\s+score\s+reason", out) and "recent_items" in out, out
    assert re.search(r"^\d+ items$", out, re.M), out
    # The point-in-time example joins real values, not the nulls of times before the demo data.
    for name in ("user.view_count_24h", "user.purchase_rate_7d"):
        m = re.search(rf"'{re.escape(name)}': \[([^\]]*)\]", out)
        assert m and "None" not in m.group(1) and len(m.group(1).split(",")) == 2, out


def test_readme_defines_every_stats_field(demo_server):
    """Each field of GET /v1/stats has its own definition in the README, and only those."""
    text = (REPO / "README.md").read_text()
    section = re.search(r"^`GET /v1/stats` fields.*?\n\n(.*?)\n\n", text, re.S | re.M)
    assert section, "README has no `GET /v1/stats` fields list"
    defined = re.findall(r"^- `(\w+)`: \S", section.group(1), re.M)
    returned = list(demo_server.get("/v1/stats").json())
    assert sorted(defined) == sorted(returned), (defined, returned)


def test_client_readme_examples(demo_server, tmp_path, monkeypatch, capsys):
    """clients/python/README.md: its ```python blocks run in order, in one namespace
    (```py blocks need other servers: TLS, tokens)."""
    text = (REPO / "clients/python/README.md").read_text()
    blocks = code_blocks(text, "python")
    assert len(blocks) == 3, blocks
    monkeypatch.chdir(tmp_path)  # the backfill example writes events.parquet
    ns: dict = {}
    for block in blocks:
        exec(compile(localize(block, demo_server), "clients/python/README.md", "exec"), ns)
    out = capsys.readouterr().out
    assert "1 [(1, 'behavior', 'unknown_behavior')]" in out, out
    assert "cart_count.status" in out and "not_found" in out, out
    assert "user.view_count_1h" in out and "item.purchase_rate_7d" in out, out
    assert "IngestResult(accepted=2, rejected=0" in out, out
    assert "400 INVALID_ARGUMENT features - features: unknown feature" in out, out
