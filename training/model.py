"""The forecaster: per-window scaling, a stacked recurrent encoder, a direct multi-step head.

The module takes raw values and returns raw-scale forecasts, so the exported ONNX graph holds
the normalisation too and the service feeds it untouched history (no scaler file to drift).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn


@dataclass
class ForecasterConfig:
    input_size: int  # L: observations read per forecast
    horizon: int  # H: steps emitted at once (direct multi-step, no recursion)
    quantiles: tuple[float, ...] = (0.5,)
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1  # between stacked layers, as in the seeds' stacked LSTM
    transform: Literal["none", "log"] = "none"  # log: for positive, multiplicative series
    scale_eps: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForecasterConfig:
        data = dict(data)
        data["quantiles"] = tuple(data.get("quantiles", (0.5,)))
        return cls(**data)


class WindowScaler(nn.Module):
    """Standardise each input window by its own mean and standard deviation.

    Scaling per window (as neuralforecast's and N-BEATS's scalers do) lets one set of weights
    serve series of any level, and keeps the recurrent cells in their useful range. The
    statistics are float64: a series at a level of 1e6 that moves by 1 would lose its variance
    to float32 cancellation.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) float64 -> scaled (B, L) float32, loc (B, 1) and scale (B, 1) float64."""
        loc = v.mean(dim=1, keepdim=True)  # (B, 1)
        # Population std, plus eps so that a flat window maps to zeros instead of NaN.
        scale = (v - loc).square().mean(dim=1, keepdim=True).sqrt() + self.eps  # (B, 1)
        return ((v - loc) / scale).float(), loc, scale


class RecurrentForecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        self.scaler = WindowScaler(config.scale_eps)
        self.rnn = rnn_cls(
            input_size=1,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(config.hidden_size, config.horizon * len(config.quantiles))

    def _transform(self, y: torch.Tensor) -> torch.Tensor:
        return y.double().log() if self.config.transform == "log" else y.double()

    def forward_scaled(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw windows (B, L) -> quantiles on the window's scale (B, H, Q), loc and scale."""
        z, loc, scale = self.scaler(self._transform(y))  # (B, L), (B, 1), (B, 1)
        states, _ = self.rnn(z.unsqueeze(-1))  # (B, L, hidden)
        last = states[:, -1]  # (B, hidden): the encoder's summary of the window
        q = self.head(last).reshape(-1, self.config.horizon, len(self.config.quantiles))
        if len(self.config.quantiles) > 1:
            q = torch.sort(q, dim=-1).values  # quantiles never cross
        return q, loc, scale  # (B, H, Q)

    def scale_target(
        self, target: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Raw targets (B, H) -> the scale forward_scaled predicts on (B, H), float32."""
        return ((self._transform(target) - loc) / scale).float()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Raw windows (B, L) -> raw-scale quantile forecasts (B, H, Q)."""
        q, loc, scale = self.forward_scaled(y)
        # Rescale in float64 and round once, so both runtimes agree to within one ulp.
        out = q.double() * scale.unsqueeze(-1) + loc.unsqueeze(-1)  # (B, H, Q)
        return (out.exp() if self.config.transform == "log" else out).float()


@dataclass
class Checkpoint:
    """Everything needed to rebuild the trained module (kept beside the ONNX graph)."""

    config: ForecasterConfig
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    def save(self, path: str) -> None:
        torch.save({"config": self.config.to_dict(), "state_dict": self.state_dict}, path)

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        return cls(config=ForecasterConfig.from_dict(raw["config"]), state_dict=raw["state_dict"])

    def build(self) -> RecurrentForecaster:
        model = RecurrentForecaster(self.config)
        model.load_state_dict(self.state_dict)
        return model.eval()
