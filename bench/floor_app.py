"""The HTTP floor for bench/serving.py: a FastAPI endpoint that accepts the forecast request's
JSON body and does nothing with it. No service can answer the same request faster on the same
server stack (uvicorn, uvloop, httptools, one worker), so the service is quoted as a share of it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/forecast")
async def forecast(body: dict[str, Any]) -> dict[str, Any]:
    return {"forecasts": []}
