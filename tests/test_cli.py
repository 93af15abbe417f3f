"""The CLI as a newcomer meets it: configuration precedence and errors,
`recsys version`, help texts, fail-fast replay, progress, the locked data
dir. Every test runs the real binary."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import recsys_bin


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    e.update(env or {})
    return subprocess.run([recsys_bin(), *args], capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)


def printed(out: str, key: str) -> tuple[str, str]:
    """The value and the source comment of a leaf key (its last dotted part,
    under the parent's block) in `config print` output."""
    parts = key.split(".")
    lines = out.splitlines()
    indent, i = 0, 0
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
