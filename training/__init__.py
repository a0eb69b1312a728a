"""Offline training: PyTorch LSTM forecasters, MLflow tracking, ONNX bundles for the api."""
