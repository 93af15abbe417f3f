"""--runtime.procs-per-core through the real binary: serve runs its Go
scheduler with that many threads per core (what /metrics reports and the
start-up log says), keeps the runtime's own choice when GOMAXPROCS is in
the environment or a CPU quota set it, and refuses a value out of range
naming the flag."""

from __future__ import annotations

import re

from test_cli import run


def gomaxprocs(server) -> int:
    m = re.search(r"^go_sched_gomaxprocs_threads (\d+)$", server.get("/metrics").text, re.M)
    assert m, "no go_sched_gomaxprocs_threads on /metrics"
    return int(m.group(1))


def runtime_log(server) -> dict[str, str]:
    line = next(l for l in server.log_path.read_text().splitlines() if "msg=runtime" in l)
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


def test_procs_per_core(server_factory):
    two = server_factory()
    log = runtime_log(two)
    cores = int(log["cores"])
    if "kept_because" in log:
        # A CPU quota below the cores chose GOMAXPROCS: it is kept.
        assert log["kept_because"] == '"a CPU quota below the cores"', log
        assert gomaxprocs(two) == int(log["gomaxprocs"]) < cores
    else:
        assert int(log["gomaxprocs"]) == 2 * cores and gomaxprocs(two) == 2 * cores, log
    two.close()

    one = server_factory("--runtime.procs-per-core", "1")
    assert gomaxprocs(one) <= cores and "kept_because" in runtime_log(one)
    one.close()

    env = server_factory(env={"GOMAXPROCS": "3"})
    assert gomaxprocs(env) == 3
    assert runtime_log(env)["kept_because"] == '"GOMAXPROCS is in the environment"'


def test_procs_per_core_out_of_range(tmp_path):
    for bad in ("0", "9"):
        res = run("serve", "--runtime.procs-per-core", bad, "--data.dir", str(tmp_path / "d"), timeout=30)
        assert res.returncode != 0
        assert f"runtime.procs-per-core: {bad} is not between 1 and 8" in res.stderr, res.stderr
    res = run("bench", "--runtime.procs-per-core", "0", timeout=30)
    assert res.returncode == 2 and "runtime.procs-per-core: 0 is not between 1 and 8" in res.stderr, res.stderr
