"""The shipped examples run as a user would run them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_art_pipeline_example_runs():
    res = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "art_pipeline.py"), "--images", "20"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for name in ("clean", "FGSM", "PGD", "AutoAttack"):
        assert any(line.startswith(name) for line in lines), res.stdout
