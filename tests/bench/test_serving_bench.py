"""bench/serving.py runs end to end (short runs, few series) and prints what it measured.

The figures of a one-second run on a loaded CI machine mean little; the committed table
under bench/results/ holds the full run. This keeps the benchmark working."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from bench.serving import cpu_busy, wait_until_quiet
from tests.conftest import REPO


def test_serving_bench_prints_its_table_targets_and_key_ratios(tmp_path):
    out = tmp_path / "serving.md"
    command = [sys.executable, "bench/serving.py", "--duration", "1", "--series", "40"]
    command += ["--connections", "1", "4", "--repeat", "2", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("Key ratios (4 connections): inline ")
    assert out.read_text().strip() == run.stdout.strip()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith("| ")]
    cases = {(cells[0].strip(), cells[1].strip()) for cells in rows if len(cells) == 9}
    for case in (
        "api: one inline series",
        "api: one stored series by id",
        "api: 40 stored series",
        "floor: no-op FastAPI endpoint, same body",
        "mlflow models serve: the same window",
    ):
        assert {(case, "1"), (case, "4")} <= cases, case
    # The model alone, the large batch's baseline, is one caller: measured at 1 connection.
    assert {c for name, c in cases if name.startswith("onnxruntime alone")} == {"1"}
    assert re.search(r"p50 [\d.]+; the model alone: p99 [\d.]+, p50 [\d.]+\)", run.stdout)
    for cells in rows:
        if len(cells) == 9 and cells[1].strip() in ("1", "4"):
            assert float(cells[2].replace(",", "")) > 0  # requests/s measured
            assert cells[7].strip() == "0", f"failed requests in {cells[0]}"
    assert re.search(r"\| no failed requests \| 0 \| yes \|", run.stdout)


def test_a_run_waits_while_the_machine_is_busy_and_not_after():
    """The api may still be writing the last run's forecast log when the next run starts; the
    benchmark waits for the CPUs to quiet down (at most its cap)."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        time.sleep(0.3)
        assert cpu_busy(0.5) > 0.5
        assert wait_until_quiet(1.0) >= 1.0  # busy throughout: waited its whole cap
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert wait_until_quiet(10.0) < 5.0
