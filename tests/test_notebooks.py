"""`make notebooks`: every notebook runs headless (nbclient, a real Jupyter
kernel) against a server loaded with the Taobao sample, and its key outputs
hold. Notebooks are stored with outputs cleared."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SHARED, Server, recsys_bin

TAOBAO_USERS = SHARED / "data/taobao/UserBehavior-users-84k.csv.gz"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def taobao_server(tmp_path_factory):
    if not TAOBAO_USERS.exists():
        pytest.skip(f"Taobao sample not found at {TAOBAO_USERS}")
    # The documented notebook server (make serve-sample): serve --load,
    # ready once the sample is applied.
    s = Server(tmp_path_factory.mktemp("notebooks"), ["--load", str(TAOBAO_USERS)], name="notebooks")
    s.start(timeout=300)
    try:
        stats = s.stats()
        assert stats["applied_offset"] == stats["log_end_offset"] >= 80_000 and stats["dead_letters"] == 0, stats
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def eval_json(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    run = subprocess.run([recsys_bin(), "eval", "--format", "taobao", str(TAOBAO_USERS), "--sample", "0.1",
                          "--bootstrap", "200", "--model-delay", "1s,1m,1h,24h", "--json"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    out.write_text(run.stdout)
    return out


def run_notebook(path: Path, env: dict[str, str]) -> dict:
    """Executes path in a fresh kernel with env set and returns the JSON of
    the line starting with SUMMARY that its cells printed."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{path.name}: notebooks are stored with outputs cleared"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    summary = None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"{path.name}: {out.get('ename')}: {out.get('evalue')}"
            for line in out.get("text", "").splitlines():
                if line.startswith("SUMMARY "):
                    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary is not None, f"{path.name} printed no SUMMARY line"
    return summary


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook(taobao_server, eval_json, notebook):
    s = taobao_server
    got = run_notebook(notebook, {"RECSYS_FLIGHT": s.flight_uri, "RECSYS_HTTP": s.url, "RECSYS_TAOBAO": str(TAOBAO_USERS),
                                  "RECSYS_EVAL_JSON": str(eval_json), "RECSYS_BIN": recsys_bin(), "MPLBACKEND": "Agg"})
    name = notebook.name
    print(f"{name}: {got}")
    if name.startswith("01_"):
        assert got["users"] > 500 and got["items"] > 10_000
        assert got["views"] >= got["purchases"] > 0
        assert got["top"] == 10 and got["hot_rows"] > 0
    elif name.startswith("02_"):
        assert got["rows"] > 10_000 and got["positives"] > 0
        # The features carry signal: both offline models beat chance.
        assert got["auc_lr"] > 0.55 and got["auc_gb"] > 0.55, got
        assert isinstance(got["ranker_auc"], float) and 0.5 < got["ranker_auc"] <= 1, got
    elif name.startswith("03_"):
        assert got["users"] == 3 and got["recs"] == 24
        assert got["methods"] == sorted(["popular", "recent_popular", "item2item", "mf", "recent", "itemknn", "als", "full", "full_frozen",
                                         "full@1s", "full@1m", "full@1h", "full@24h"])
        assert got["freshness"] == ["0s", "1s", "1m", "1h", "24h"], got
        assert got["days"] >= 2
    else:
        pytest.fail(f"no assertions for {name}")
