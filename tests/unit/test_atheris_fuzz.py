"""The atheris harness (tests/fuzz/route_stage_fuzz.py) run for a fixed number of inputs from a fixed seed: no input
may crash it, i.e. get a 5xx from Babelgate, raise, log an ERROR line or hang.

`BG_FUZZ_RUNS` inputs (12,000 by default: ~12 s on two idle cores, ~20 s on busy ones); a longer run, e.g.
`BG_FUZZ_RUNS=200000 python -m pytest tests/unit/test_atheris_fuzz.py -s`, prints its figures the same way.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_RUNS = int(os.environ.get("BG_FUZZ_RUNS", "12000"))
BUDGET = 60 + FUZZ_RUNS // 250
"""Seconds, a backstop: ~1,500 exec/s on two idle cores, half that on busy ones, and less as the corpus grows."""
ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "fuzz" / "route_stage_fuzz.py"
DONE = re.compile(r"^Done (\d+) runs in (\d+) second", re.MULTILINE)
LAST_STATS = re.compile(r"^#\d+\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\S+)", re.MULTILINE)
EXEC_PER_SEC = re.compile(r"^stat::average_exec_per_sec:\s+(\d+)", re.MULTILINE)
FAILURE_BANNER = "=== Babelgate fuzz failure ==="
"""Printed by the harness before the traceback of a failing input."""


@pytest.mark.timeout(BUDGET + 60)
def test_fuzzing_the_route_stage_finds_no_crash(tmp_path: Path) -> None:
    assert importlib.util.find_spec("atheris") is not None, "atheris is a test dependency: pip install -e '.[test]'"
    corpus = tmp_path / "corpus"
    shutil.copytree(ROOT / "tests" / "fuzz" / "corpus", corpus)  # libFuzzer adds to the corpus it is given
    env = {name: value for name, value in os.environ.items() if name != "BG_FUZZ_TRIAGE_DIR"}
    command = [sys.executable, str(HARNESS), f"-runs={FUZZ_RUNS}", f"-max_total_time={BUDGET}", "-seed=1",
               "-max_len=4096", "-timeout=10", "-print_final_stats=1", f"-artifact_prefix={tmp_path}/", str(corpus)]
    finished = subprocess.run(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=BUDGET + 30, check=False)
    output = finished.stdout
    if finished.returncode != 0:
        start = output.find(FAILURE_BANNER)
        report = output[start:] if start >= 0 else output[-4000:]
        pytest.fail(f"the fuzzer found a crash (input saved in {tmp_path}; replay it with "
                    f"`python {HARNESS.relative_to(ROOT)} <file>`):\n{report[:12000]}", pytrace=False)
    done, stats, rate = DONE.search(output), LAST_STATS.search(output), EXEC_PER_SEC.search(output)
    assert done and stats and rate, output[-2000:]
    runs, seconds = int(done.group(1)), int(done.group(2))
    cov, ft, corp = stats.groups()
    print(f"\natheris: {runs} runs in {seconds} s, {rate.group(1)} exec/s, cov: {cov} ft: {ft} corpus: {corp}")
    assert runs == FUZZ_RUNS, f"stopped after {runs} of {FUZZ_RUNS} runs: the {BUDGET} s budget ran out"


def test_every_input_the_fuzzer_once_crashed_on_is_now_a_4xx(tmp_path: Path) -> None:
    """tests/fuzz/regressions/: inputs that once got a 502 (a wrong JSON type reaching a translator), replayed."""
    inputs = sorted((ROOT / "tests" / "fuzz" / "regressions").iterdir())
    assert len(inputs) >= 20
    env = {name: value for name, value in os.environ.items() if name != "BG_FUZZ_TRIAGE_DIR"}
    replayed = subprocess.run([sys.executable, str(HARNESS), *map(str, inputs)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                              timeout=120, check=False)
    assert replayed.returncode == 0, replayed.stdout[-6000:]
    assert replayed.stdout.count("Executed ") == len(inputs), replayed.stdout[-2000:]
