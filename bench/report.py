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
        f"Machine: {platform.node()}, {os.cpu_count()} cores, no GPU, "
        f"Python {platform.python_version()}; commit {commit}."
    )


def emit(lines: list[str], out: Path | None) -> None:
    """Print the table; also write it to ``out`` when given."""
    table = "\n".join(lines)
    print(table)
    if out is not None:
        out.write_text(table + "\n")
