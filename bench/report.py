"""What every benchmark table states about its run, and how it is printed and saved."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_facts() -> str:
    """Machine and commit, for the line under a table's title."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"Machine: {platform.node()}, {os.cpu_count()} cores ({cpu()}), no GPU, "
        f"Python {platform.python_version()}; commit {commit}."
    )


def cpu() -> str:
    """The processor's model name and its widest vector instructions. Tables from different
    days may come from different processors: the 60-step model ran a 1,000-series batch in
    57 ms on an AVX2-only AMD EPYC and in 35 ms on an AVX-512 Intel Xeon, both 2-core VMs."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    first = info.split("\n\n")[0].splitlines()  # the first processor's block
    fields = {key.strip(): value.strip() for key, _, value in (s.partition(":") for s in first)}
    flags = set(fields.get("flags", "").split())
    vector = next(
        (name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags),
        "no AVX2",
    )
    return f"{fields.get('model name', platform.machine())}, {vector}"


def emit(lines: list[str], out: Path | None) -> None:
    """Print the table; also write it to ``out`` when given."""
    table = "\n".join(lines)
    print(table)
    if out is not None:
        out.write_text(table + "\n")
