"""The benchmarks keep working: each runs once at the small size.

Benchmarks report, they never gate: no time is asserted here, only that the
harness runs every benchmark to the end and writes its JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_small_benchmark_run_finishes_and_writes_every_result(
    tmp_path: Path,
) -> None:
    out = tmp_path / "small.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--small", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(out.read_text())
    names = [r["name"] for r in data["results"]]
    assert names == [
        "latency",
        "fanout",
        "connections",
        "capture",
        "burst",
        "memory",
        "history",
    ]
    for result in data["results"]:
        assert "error" not in result, result
        assert result["rows"], result["name"]
        assert result["targets"], result["name"]
    assert data["meta"]["size"] == "small"
    assert "**Targets**" in proc.stdout
