"""schemathesis against the api's own OpenAPI document, over HTTP, on PostgreSQL: every
operation, every default check, with the admin token, up to 100 examples per operation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import (
    ADMIN_TOKEN,
    AIR_CSV,
    MODELS,
    fresh_database,
    start_migrated_api,
    store_series,
)

CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(tmp_path):
    with fresh_database("postgresql", tmp_path) as url:
        env = {"DATABASE_URL": url, "FORECAST_MODELS_DIR": str(MODELS)}
        api, base = start_migrated_api({**env, "FORECAST_LOG_LEVEL": "WARNING"})
        try:
            # The document's examples forecast the stored series "air": it exists.
            store_series(base, "air", pd.read_csv(AIR_CSV))
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "schemathesis.cli"),
                    *("--config-file", str(CONFIG), "run", f"{base}/openapi.json"),
                    *("--header", f"Authorization: Bearer {ADMIN_TOKEN}"),
                    *("--max-examples", "100", "--seed", "20261125", "--workers", "1"),
                    *("--request-timeout", "30", "--no-color"),
                ],
                cwd=tmp_path,  # its cache folder goes there, not into the repository
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            api.terminate()
            api.wait(timeout=30)
    output = done.stdout + done.stderr
    summary = re.search(r"(\d+) generated, (\d+) passed", output)
    tested = re.search(r"Tested: (\d+)", output)
    print(summary.group(0) if summary else "no summary", "|", tested.group(0) if tested else "")
    assert done.returncode == 0, output[-6000:]
    assert summary is not None and summary.group(1) == summary.group(2), output[-3000:]
    assert tested is not None and int(tested.group(1)) >= 16, output[-3000:]  # every operation
    assert int(summary.group(1)) >= 1000, output[-3000:]
