"""The forecasting api: FastAPI + onnxruntime. It never imports torch."""
