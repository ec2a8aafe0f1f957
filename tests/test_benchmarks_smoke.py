"""The benchmark command runs: its smoke mode prints P1 to P5 (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmark_prints_every_figure_with_its_target_in_smoke_mode(tmp_path: Path) -> None:
    """``benchmarks/run.py --smoke``: tiny stores and the cheapest hasher, a few seconds."""
    figures = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke",
         "--workdir", str(tmp_path), "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    for heading in ("P1 overhead", "P2 scale", "P3 bulk issuance", "P4 footprint",
                    "P5 concurrency"):
        assert heading in out
    for target in ("<= 0.20 %", "<= 0.70 %", "<= 1.25", ">= 0.85"):
        assert target in out
    assert set(json.loads(figures.read_text())) >= {"P1", "P2", "P3", "P4", "P5"}
    assert "sqlite-threads" in json.loads(figures.read_text())["P5"]
    assert list(tmp_path.glob("am-bench-*")) == []  # the stores are removed
