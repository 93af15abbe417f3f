"""The README's quick start, followed literally in a fresh clone: `make run`
as written (only its ports moved, through the RECSYS_* environment, so
that the test cannot collide with a server on this machine), then each
command of the next block, and every output the README shows must appear,
including the cart just posted in the user's features."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import REPO, code_blocks, free_port


def section(name: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {name}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    dest = tmp_path_factory.mktemp("quickstart") / "recsys"
    res = subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return dest


def test_quick_start_as_written(clone):
    qs = section("Quick start")
    sh, text = code_blocks(qs, "sh"), code_blocks(qs, "text")
    setup = commands(sh[0])
    assert setup[0] == "make run" and setup[1] == "make test", setup
    ready_shown = text[0].strip()

    ports = {"http": free_port(), "grpc": free_port(), "flight": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env.update({f"RECSYS_{k.upper()}_ADDR": f"127.0.0.1:{p}" for k, p in ports.items()})
    proc = subprocess.Popen(["bash", "-c", setup[0]], cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    out: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stdout:
            out.append(line)
            if line.startswith("recsys ready:"):
                ready.set()
    threading.Thread(target=pump, daemon=True).start()
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        # Not ready while the demo stream is being applied; ready after.
        saw_loading = False
        deadline = time.monotonic() + 600
        while not ready.is_set():
            assert proc.poll() is None, "make run exited:\n" + "".join(out)
            assert time.monotonic() < deadline, "no 'recsys ready' line:\n" + "".join(out)
            try:
                r = requests.get(base + "/readyz", timeout=2)
                if r.status_code == 503 and "loading" in r.text:
                    saw_loading = True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        printed = "".join(out)
        assert ready_shown in printed, f"README shows {ready_shown!r}; make run printed:\n{printed}"
        assert "curl" in printed.split("recsys ready:", 1)[1], printed
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        stats = requests.get(base + "/v1/stats", timeout=5).json()
        assert int(stats["applied_offset"]) == int(stats["log_end_offset"]) == 200_000, stats
        assert saw_loading or "loading the initial events" in printed, printed

        outputs = []
        for cmd in commands(sh[1]):
            local = cmd.replace("localhost:8080", f"127.0.0.1:{ports['http']}")
            res = subprocess.run(["bash", "-c", local], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, f"{cmd}\n-> exit {res.returncode}: {res.stdout}{res.stderr}"
            outputs.append(res.stdout.strip())
        shown = [line for line in text[1].splitlines() if line.strip()]
        assert len(shown) == 2, shown
        assert outputs[0] == shown[0], (outputs[0], shown[0])
        # The cart posted a moment ago is in the features already.
        pattern = re.compile(re.escape(shown[1]).replace(re.escape("2026-12-01T14:30:37Z"), "[0-9T:.Z-]+"))
        assert pattern.fullmatch(outputs[1]), (outputs[1], shown[1])
        assert '"value":1,' in outputs[1]
        recs = requests.get(base + "/v1/users/u1/recommendations?k=10", timeout=5).json()
        assert len(recs["items"]) == 10 and outputs[2].startswith('{"items":'), outputs[2]
        assert '"id":"i42"' in outputs[3] and '"name":"view_count"' in outputs[3], outputs[3]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
