"""The per-request code (ext_proc/stages, ext_proc/providers, ext_proc/transport) type-checks under `mypy --strict`
(configured in pyproject.toml's [tool.mypy]); a `# type: ignore` there that is no longer needed is an error too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_the_hot_path_type_checks_strictly(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
