"""The retention benchmark runs: its smoke mode prints P7 (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_retention_benchmark_prints_its_figures_in_smoke_mode(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "retention.py"), "--smoke",
         "--stores", "memory,sqlite", "--workdir", str(tmp_path), "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "P7 retention" in completed.stdout
    found = json.loads(figures.read_text())
    assert set(found) == {"memory/2000", "memory/10000", "sqlite/2000", "sqlite/10000"}
    assert all(f["due"] == f["accounts"] // 10 for f in found.values())
    assert list(tmp_path.glob("am-bench-*")) == []  # the stores are removed
