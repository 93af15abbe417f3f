"""The CLI as a newcomer meets it: configuration precedence and errors,
`recsys version`, help texts, fail-fast replay, progress, the locked data
dir. Every test runs the real binary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, recsys_bin


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    e.update(env or {})
    return subprocess.run([recsys_bin(), *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)


def printed(out: str, key: str) -> tuple[str, str]:
    """The value and the source comment of a leaf key (its last dotted part,
    under the parent's block) in `config print` output."""
    parts = key.split(".")
    lines = out.splitlines()
    i = 0
    for depth, p in enumerate(parts):
        pat = re.compile(r"^" + " " * (2 * depth) + re.escape(p) + r":(.*)$")
        while i < len(lines) and not pat.match(lines[i]):
            i += 1
        assert i < len(lines), f"{key} not printed:\n{out}"
        rest = pat.match(lines[i]).group(1)
        i += 1
    value, _, source = rest.partition(" # ")
    return value.strip(), source.strip()


# --- configuration -----------------------------------------------------------


def test_list_flag_is_the_list_given(tmp_path):
    res = run("config", "print", "--kafka.brokers", "a:1,b:2")
    assert res.returncode == 0, res.stderr
    assert printed(res.stdout, "kafka.brokers") == ("['a:1', 'b:2']", "flag")


def test_flag_overrides_file_and_env_overrides_file(tmp_path):
    cfg = tmp_path / "recsys.yaml"
    cfg.write_text("kafka:\n  brokers: [c:3]\n  topic: from-file\ndata:\n  dir: /from/file\ningest:\n  max-batch: 77\n")
    res = run("config", "print", "--config", str(cfg), "--kafka.brokers", "a:1,b:2", "--data.dir", "/from/flag",
              env={"RECSYS_DATA_DIR": "/from/env", "RECSYS_INGEST_MAX_BATCH": "88"})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert printed(out, "kafka.brokers") == ("['a:1', 'b:2']", "flag")
    assert printed(out, "kafka.topic") == ("from-file", "file")
    assert printed(out, "data.dir") == ("/from/flag", "flag")
    assert printed(out, "ingest.max-batch") == ("88", "env RECSYS_INGEST_MAX_BATCH")
    assert printed(out, "http.addr") == (":8080", "default")
    # A list from the environment replaces the file's, never appends.
    res = run("config", "print", "--config", str(cfg), env={"RECSYS_KAFKA_BROKERS": "x:1,y:2"})
    assert printed(res.stdout, "kafka.brokers") == ("['x:1', 'y:2']", "env RECSYS_KAFKA_BROKERS")
    # The config file can come from RECSYS_CONFIG.
    res = run("config", "print", env={"RECSYS_CONFIG": str(cfg)})
    assert printed(res.stdout, "kafka.topic") == ("from-file", "file")


def test_config_print_is_accepted_back(tmp_path):
    first = run("config", "print", "--kafka.brokers", "a:1,b:2", "--data.dir", str(tmp_path / "d"), "--demo",
                "--models.dim", "16", "--ingest.allowed-lateness", "2h")
    assert first.returncode == 0, first.stderr
    cfg = tmp_path / "printed.yaml"
    cfg.write_text(first.stdout)
    again = run("config", "print", "--config", str(cfg))
    assert again.returncode == 0, again.stderr
    strip = lambda out: [line.split(" # ")[0] for line in out.splitlines() if not line.startswith("#")]
    assert strip(again.stdout) == strip(first.stdout)
    assert printed(again.stdout, "demo.enabled") == ("true", "file")
    assert printed(again.stdout, "models.dim") == ("16", "file")


def test_unknown_keys_and_variables_are_named(tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("data:\n  dirr: /x\nmodels:\n  dimm: 8\n")
    res = run("config", "print", "--config", str(cfg))
    assert res.returncode == 2
    assert "data.dirr: unknown key (did you mean data.dir?)" in res.stderr, res.stderr
    assert "models.dimm: unknown key (did you mean models.dim?)" in res.stderr, res.stderr
    assert "struct" not in res.stderr
    res = run("serve", "--config", str(cfg))
    assert res.returncode == 2 and "data.dirr: unknown key" in res.stderr, res.stderr

    res = run("config", "print", env={"RECSYS_DATA_DIRR": "/x"})
    assert res.returncode == 2
    assert "RECSYS_DATA_DIRR: unknown key (did you mean RECSYS_DATA_DIR?)" in res.stderr, res.stderr
    # Variables that are not configuration keys but are documented are fine.
    res = run("config", "print", env={"RECSYS_TOKEN": "t", "RECSYS_BIN": "/x"})
    assert res.returncode == 0, res.stderr


def test_bad_values_in_the_users_terms(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("ingest:\n  max-batch: lots\n  allowed-lateness: 3 days\nhttp:\n  addr: [a, b]\n")
    res = run("config", "print", "--config", str(cfg))
    assert res.returncode == 2
    assert 'ingest.max-batch: "lots" is not a whole number' in res.stderr, res.stderr
    assert 'ingest.allowed-lateness: "3 days" is not a duration such as 90s, 5m or 24h' in res.stderr, res.stderr
    assert "http.addr: a list, but the key takes one a string" not in res.stderr
    assert "http.addr: a list" in res.stderr, res.stderr
    cfg.write_text("- just\n- a list\n")
    res = run("config", "print", "--config", str(cfg))
    assert res.returncode == 2 and "not a YAML mapping" in res.stderr, res.stderr
    res = run("config", "print", "--config", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "no such file or directory" in res.stderr, res.stderr


# --- commands ----------------------------------------------------------------

COMMANDS = ["serve", "replay", "gen", "bench", "load", "eval", "backup", "rebuild", "config", "config print", "kafka",
            "kafka produce", "kafka bench", "kafka dump", "version"]


def test_version():
    res = run("version")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.fullmatch(r"recsys v\S+", lines[0]), res.stdout
    assert re.fullmatch(r"commit [0-9a-f]{40}( \(modified\))?", lines[1]), res.stdout
    assert lines[2].startswith("go1."), res.stdout
    assert run("--version").stdout.strip() == "recsys version " + lines[0].split()[1]
    j = json.loads(run("version", "--json").stdout)
    assert j["revision"] == lines[1].split()[1] and j["go"] == lines[2].split()[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_an_example(command):
    res = run(*command.split(), "--help")
    assert res.returncode == 0, res.stderr
    assert "\nExamples:\n  recsys " in res.stdout, res.stdout


def test_flags_only_where_they_apply():
    rebuild = run("rebuild", "--help").stdout
    for absent in ("--http.addr", "--auth.token-file", "--demo", "--tls.cert", "--limits.max-in-flight"):
        assert absent not in rebuild, absent
    for present in ("--data.dir", "--kafka.brokers", "--models.dim", "--config", "--from-time", "--progress"):
        assert present in rebuild, present
    for tool in ("produce", "dump", "bench"):
        out = run("kafka", tool, "--help").stdout
        assert "--kafka.brokers" in out
        for absent in ("--kafka.group", "--kafka.instance-id", "--kafka.dlq-topic", "--kafka.content-type"):
            assert absent not in out, (tool, absent)


# --- replay --------------------------------------------------------------------


def write_jsonl(path: Path, events: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def by_user(tmp_path: Path, n: int = 3000) -> tuple[Path, int]:
    """A generated stream regrouped by user, as the Taobao samples are."""
    src = tmp_path / "gen.jsonl"
    res = run("gen", "--events", str(n), "--users", "40", "--items", "300", "--categories", "10",
              "--start", "2026-01-01T00:00:00Z", "--span", "24h", "--out", str(src))
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in src.read_text().splitlines()]
    events.sort(key=lambda e: e["user_id"])
    return write_jsonl(tmp_path / "grouped.jsonl", events), len(events)


def test_replay_fails_fast_on_a_bad_target(tmp_path, server):
    f, _ = by_user(tmp_path, 100)
    res = run("replay", "--format", "jsonl", "--target", f"127.0.0.1:{server.http_port}", str(f), timeout=30)
    assert res.returncode == 2 and "is not an http:// or https:// URL" in res.stderr, res.stderr
    # Nothing listens there: refused at once, not retried for --retry-for (5 min).
    res = run("replay", "--format", "jsonl", "--target", f"http://127.0.0.1:{free_port()}", str(f), timeout=30)
    assert res.returncode == 1 and "connection refused" in res.stderr, res.stderr
    res = run("replay", "--format", "jsonl", "--target", server.url + "/wrong/path", str(f), timeout=30)
    assert res.returncode == 1 and "is not a recsys server" in res.stderr and "404" in res.stderr, res.stderr
    assert server.stats()["log_end_offset"] == 0
    # The load tool too: it would otherwise count errors for its whole --duration.
    res = run("load", "--target", f"http://127.0.0.1:{free_port()}", "--duration", "10m", timeout=30)
    assert res.returncode == 1 and "connection refused" in res.stderr, res.stderr


def test_replay_sort_and_rejections_by_reason(tmp_path, server_factory):
    f, n = by_user(tmp_path)
    s = server_factory("--ingest.allowed-lateness", "1h")
    res = run("replay", "--format", "jsonl", "--progress", "off", "--batch", "500", "--target", s.url, str(f), timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "batch/server_rejected" not in res.stdout
    m = re.search(r"ts/late\s+(\d+)", res.stdout)
    assert m, res.stdout
    accepted = int(re.search(r"(\d+) accepted", res.stdout).group(1))
    assert accepted + int(m.group(1)) == n, res.stdout
    assert "needs --sort" in res.stdout
    assert s.stats()["dead_letters"] == int(m.group(1))

    s2 = server_factory("--ingest.allowed-lateness", "1h")
    res = run("replay", "--format", "jsonl", "--sort", "--progress", "on", "--target", s2.url, str(f), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{n} events read, {n} accepted, 0 rejected" in res.stdout, res.stdout
    # The bar counts events out of the file's lines, not bytes.
    assert f"/{n}, " in res.stderr and " events/" in res.stderr and "B/s" not in res.stderr, res.stderr
    # --wait (the default): applied when replay returns.
    st = s2.stats()
    assert st["applied_offset"] == st["log_end_offset"] == n, st


def test_gen_output_is_accepted_by_a_live_server(tmp_path, server_factory):
    s = server_factory("--clock", "wall", "--ingest.allowed-lateness", "1h", "--demo", "--demo.events", "5000")
    out = tmp_path / "now.jsonl"
    res = run("gen", "--events", "2000", "--out", str(out))
    assert res.returncode == 0, res.stderr
    ts = [json.loads(line)["ts"] for line in out.read_text().splitlines()]
    now = time.time() * 1000
    assert now - 3_700_000 < min(ts) and max(ts) <= now, (min(ts), max(ts), now)
    res = run("replay", "--format", "jsonl", "--progress", "off", "--target", s.url, str(out), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2000 accepted, 0 rejected" in res.stdout, res.stdout


def test_locked_data_dir_names_the_owner(tmp_path, server):
    f, _ = by_user(tmp_path, 100)
    res = run("replay", "--format", "jsonl", "--data.dir", str(server.data_dir), str(f), timeout=30)
    assert res.returncode == 1
    assert f"data dir {server.data_dir} is in use: another recsys is serving it (pid {server.proc.pid})" in res.stderr, res.stderr
    assert "resource temporarily unavailable" not in res.stderr


def test_serve_load_is_ready_once_applied(tmp_path, server_factory):
    f, n = by_user(tmp_path)
    s = server_factory("--load", str(f), "--ingest.allowed-lateness", "1h")
    st = s.stats()  # start() waited for /readyz
    assert st["applied_offset"] == st["log_end_offset"] == n and st["dead_letters"] == 0, st
    assert "recsys ready:" in s.log_path.read_text()
    # A restart does not load the files again.
    s.restart()
    assert s.stats()["log_end_offset"] == n


def test_eval_model_delay_errors_name_the_flag(tmp_path):
    events = tmp_path / "e.csv"
    events.write_text("1,2,3,pv,1511544070\n")
    for value, want in [("1d", 'model-delay: "1d" is not a duration such as 1s, 1m, 1h or 24h'),
                        ("1h,,24h", 'model-delay: "" is not a duration'),
                        ("-1m", "model-delay: -1m is not in [0, 8760h]"),
                        ("9000h", "model-delay: 9000h is not in [0, 8760h]")]:
        res = run("eval", "--format", "taobao", str(events), "--model-delay", value)
        assert res.returncode == 2 and want in res.stderr, (value, res.stderr)
