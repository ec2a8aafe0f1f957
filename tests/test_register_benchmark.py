"""The register benchmark runs: its smoke mode prints P6 (no timing is checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_register_benchmark_prints_its_figures_in_smoke_mode(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "register.py"), "--smoke",
         "--stores", "memory", "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)

    assert completed.returncode == 0, completed.stderr
    assert "P6 register sync" in completed.stdout
    measured = json.loads(figures.read_text())["P6"]
    assert [f["children"] for f in measured] == [1_000, 4_000]
    assert all(f["argon2_work"] == 0 for f in measured)
