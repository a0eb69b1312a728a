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
    bidirectional: bool = False  # encoder reads the window both ways
    conv_channels: int = 0  # > 0: a causal Conv1d front-end (the seeds' "ConvLSTM")
    conv_kernel: int = 3
    head: Literal["linear", "attention"] = "linear"  # attention: per-step queries over states
    transform: Literal["none", "log"] = "none"  # log: for positive, multiplicative series
    # > 1: remove the window's own seasonal profile (period m) before the encoder and add it
    # back to the forecast, as classical decomposition and ES-RNN do. L must be a multiple.
    season_length: int = 1
    # With season_length > 1: the encoder also reads the removed profile, and a learned gate
    # in [0, 1] decides per window how much of it returns to the forecast. A noisy window's
    # "profile" is mostly noise, which a fixed decomposition would add back in full.
    season_gate: bool = False
    # > 1: a calendar covariate. The graph takes a second input, the position of the first
    # forecast step within this period (month of year for monthly data: 0 = January), and
    # every encoder step reads its own position as sin and cos.
    calendar_period: int = 0
    scale_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.season_length > 1 and self.input_size % self.season_length:
            raise ValueError(
                f"input_size {self.input_size} must be a multiple of season_length "
                f"{self.season_length} to deseasonalise"
            )
        if self.calendar_period == 1:
            raise ValueError("a calendar covariate needs a frequency with a seasonal period > 1")
        if self.season_gate and self.season_length <= 1:
            raise ValueError("season_gate needs season_length > 1 (a profile to gate)")

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


class SeasonalProfile(nn.Module):
    """The window's seasonal profile: each season position's mean deviation from its cycle's
    mean, averaged over the window's cycles (zero-mean over a season)."""

    def __init__(self, input_size: int, horizon: int, season_length: int) -> None:
        super().__init__()
        self.m = season_length
        self.cycles = input_size // season_length
        # Season position of each forecast step (the window starts at position 0).
        future = [(input_size + h) % season_length for h in range(horizon)]
        self.register_buffer("future_positions", torch.tensor(future), persistent=False)

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L) float64 -> deseasonalised window (B, L), the profile over the window (B, L)
        and at the horizon (B, H)."""
        cycles = v.reshape(-1, self.cycles, self.m)  # (B, k, m)
        deviations = cycles - cycles.mean(dim=2, keepdim=True)  # (B, k, m)
        profile = deviations.mean(dim=1)  # (B, m)
        past = profile.repeat(1, self.cycles)  # (B, L): the window starts at position 0
        return v - past, past, profile[:, self.future_positions]


class CalendarFeatures(nn.Module):
    """Each input step's position within the calendar period as (sin, cos): the encoder knows
    which month (or quarter, weekday...) every value belongs to."""

    def __init__(self, input_size: int, period: int) -> None:
        super().__init__()
        # Offsets of the input steps from the first forecast step: -L .. -1.
        steps = torch.arange(-input_size, 0, dtype=torch.float32)
        self.register_buffer("angles", 2 * torch.pi * steps / period, persistent=False)
        self.step = 2 * torch.pi / period

    def forward(self, position: torch.Tensor) -> torch.Tensor:
        """(B,) position of the first forecast step -> (B, L, 2)."""
        angle = position.float().unsqueeze(-1) * self.step + self.angles  # (B, L)
        return torch.stack([angle.sin(), angle.cos()], dim=-1)


class ConvFrontEnd(nn.Module):
    """Causal 1-D convolution over the scaled window: local patterns become the features the
    recurrent layers read (the seeds' "ConvLSTM")."""

    def __init__(self, in_channels: int, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(in_channels, channels, kernel_size=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, F) -> (B, L, C); left-padded so step t sees only steps <= t."""
        padded = nn.functional.pad(x.transpose(1, 2), (self.kernel - 1, 0))  # (B, F, L + k - 1)
        return torch.relu(self.conv(padded)).transpose(1, 2)  # (B, L, C)


class AttentionHead(nn.Module):
    """Direct multi-step decoding with attention (seed 002's encoder-decoder): one learned
    query per horizon step attends over all encoder states."""

    def __init__(self, state_size: int, horizon: int, n_quantiles: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(horizon, state_size) / state_size**0.5)
        self.out = nn.Linear(2 * state_size, n_quantiles)

    def forward(self, states: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        """states (B, L, S), summary (B, S) -> (B, H, Q)."""
        scores = torch.einsum("hs,bls->bhl", self.queries, states) / states.shape[-1] ** 0.5
        context = torch.einsum("bhl,bls->bhs", scores.softmax(dim=-1), states)  # (B, H, S)
        horizon = self.queries.shape[0]
        repeated = summary.unsqueeze(1).expand(-1, horizon, -1)  # (B, H, S)
        return self.out(torch.cat([context, repeated], dim=-1))  # (B, H, Q)


class RecurrentForecaster(nn.Module):
    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__()
        self.config = config
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU}[config.cell]
        self.scaler = WindowScaler(config.scale_eps)
        self.season = (
            SeasonalProfile(config.input_size, config.horizon, config.season_length)
            if config.season_length > 1
            else None
        )
        self.calendar = (
            CalendarFeatures(config.input_size, config.calendar_period)
            if config.calendar_period > 1
            else None
        )
        # The scaled value, plus the scaled profile (gate), plus sin and cos (calendar).
        n_features = 1 + int(config.season_gate) + 2 * int(self.calendar is not None)
        self.front = (
            ConvFrontEnd(n_features, config.conv_channels, config.conv_kernel)
            if config.conv_channels
            else None
        )
        self.rnn = rnn_cls(
            input_size=config.conv_channels or n_features,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        state_size = config.hidden_size * (2 if config.bidirectional else 1)
        self.gate = nn.Linear(state_size, 1) if config.season_gate else None
        n_out = len(config.quantiles)
        if config.head == "attention":
            self.attention: AttentionHead | None = AttentionHead(state_size, config.horizon, n_out)
            self.head = None
        else:
            self.attention = None
            self.head = nn.Linear(state_size, config.horizon * n_out)

    def _transform(self, y: torch.Tensor) -> torch.Tensor:
        return y.double().log() if self.config.transform == "log" else y.double()

    def forward_scaled(
        self, y: torch.Tensor, position: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw windows (B, L) -> quantiles on the window's scale (B, H, Q), loc and scale.
        ``position`` (B,): the first forecast step's calendar position (calendar models only).

        With a seasonal profile, ``loc`` is (B, H): the window's level plus the profile at each
        forecast step, so that ``q * scale + loc`` is the forecast on the transformed scale.
        """
        v = self._transform(y)  # (B, L) float64
        past_profile = future_profile = None
        if self.season is not None:
            v, past_profile, future_profile = self.season(v)  # (B, L), (B, L), (B, H)
        z, loc, scale = self.scaler(v)  # (B, L), (B, 1), (B, 1)
        features = z.unsqueeze(-1)  # (B, L, 1)
        if self.gate is not None:
            assert past_profile is not None
            profile = (past_profile / scale).float().unsqueeze(-1)  # (B, L, 1)
            features = torch.cat([features, profile], dim=-1)  # (B, L, 2)
        if self.calendar is not None:
            if position is None:
                raise ValueError("this model reads a calendar position with every window")
            features = torch.cat([features, self.calendar(position)], dim=-1)  # (B, L, F)
        if self.front is not None:
            features = self.front(features)  # (B, L, C)
        states, _ = self.rnn(features)  # (B, L, S); S = hidden, or 2 * hidden if bidirectional
        summary = self._summary(states)  # (B, S)
        if future_profile is not None:
            if self.gate is not None:
                future_profile = future_profile * torch.sigmoid(self.gate(summary)).double()
            loc = loc + future_profile  # (B, H)
        if self.attention is not None:
            q = self.attention(states, summary)  # (B, H, Q)
        else:
            assert self.head is not None
            q = self.head(summary).reshape(-1, self.config.horizon, len(self.config.quantiles))
        if len(self.config.quantiles) > 1:
            q = torch.sort(q, dim=-1).values  # quantiles never cross
        return q, loc, scale  # (B, H, Q)

    def _summary(self, states: torch.Tensor) -> torch.Tensor:
        """The encoder's summary of the window: the forward pass's last state, and for a
        bidirectional encoder the backward pass's state at the first step (it has read all)."""
        if not self.config.bidirectional:
            return states[:, -1]
        hidden = self.config.hidden_size
        return torch.cat([states[:, -1, :hidden], states[:, 0, hidden:]], dim=-1)

    def scale_target(
        self, target: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """Raw targets (B, H) -> the scale forward_scaled predicts on (B, H), float32.

        loc is (B, 1), or (B, H) with a seasonal profile: it broadcasts over the H steps."""
        return ((self._transform(target) - loc) / scale).float()

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def quantiles(self) -> tuple[float, ...]:
        return self.config.quantiles

    @property
    def positive_only(self) -> bool:
        """The graph takes logs: it needs strictly positive inputs."""
        return self.config.transform == "log"

    @property
    def calendar_period(self) -> int:
        return self.config.calendar_period

    def describe(self) -> dict[str, Any]:
        return self.config.to_dict()

    def forward(self, y: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """Raw windows (B, L) [and calendar positions (B,)] -> raw-scale quantile forecasts
        (B, H, Q)."""
        q, loc, scale = self.forward_scaled(y, position)
        # Rescale in float64 and round once, so both runtimes agree to within one ulp.
        out = q.double() * scale.unsqueeze(-1) + loc.unsqueeze(-1)  # (B, H, Q)
        return (out.exp() if self.config.transform == "log" else out).float()


class EnsembleForecaster(nn.Module):
    """Several trained members (seeds, input lengths, cells) combined by their median.

    The ensemble reads windows as long as its longest member's; each member reads the last
    L_i values of it. The median is taken per step and quantile, so non-crossing members stay
    non-crossing; it is computed by sorting along the member axis (ONNX TopK).
    """

    def __init__(self, members: list[RecurrentForecaster]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        if any((m.horizon, m.quantiles) != (first.horizon, first.quantiles) for m in members):
            raise ValueError("ensemble members must share horizon and quantiles")
        if len({m.calendar_period for m in members} - {0}) > 1:
            raise ValueError("ensemble members that read the calendar must share its period")
        self.members = nn.ModuleList(members)

    @property
    def input_size(self) -> int:
        return max(m.input_size for m in self.members)  # type: ignore[misc]

    @property
    def horizon(self) -> int:
        return int(self.members[0].horizon)

    @property
    def quantiles(self) -> tuple[float, ...]:
        return tuple(self.members[0].quantiles)

    @property
    def positive_only(self) -> bool:
        return any(m.positive_only for m in self.members)

    @property
    def calendar_period(self) -> int:
        return max(m.calendar_period for m in self.members)  # type: ignore[misc]

    def describe(self) -> dict[str, Any]:
        return {"ensemble": "median", "members": [m.describe() for m in self.members]}

    def forward(self, y: torch.Tensor, position: torch.Tensor | None = None) -> torch.Tensor:
        """Raw windows (B, L_max) [and calendar positions (B,)] -> median of the members'
        forecasts (B, H, Q)."""
        outputs = torch.stack(
            [m(y[:, -m.input_size :], position) for m in self.members]
        )  # (N, B, H, Q)
        n = outputs.shape[0]
        if n == 1:
            return outputs[0]
        ordered = torch.sort(outputs, dim=0).values
        if n % 2:
            return ordered[n // 2]
        return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


Forecaster = RecurrentForecaster | EnsembleForecaster


@dataclass
class Checkpoint:
    """Everything needed to rebuild the trained module (kept beside the ONNX graph): one
    config and state per member; a single model is an ensemble of one."""

    configs: list[ForecasterConfig]
    state_dicts: list[dict[str, torch.Tensor]] = field(repr=False)

    @classmethod
    def of(cls, model: Forecaster) -> Checkpoint:
        members = list(model.members) if isinstance(model, EnsembleForecaster) else [model]
        return cls(
            configs=[m.config for m in members],  # type: ignore[misc]
            state_dicts=[m.state_dict() for m in members],
        )

    def save(self, path: str) -> None:
        torch.save(
            {
                "members": [
                    {"config": c.to_dict(), "state_dict": s}
                    for c, s in zip(self.configs, self.state_dicts, strict=True)
                ]
            },
            path,
        )

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        members = raw["members"]
        return cls(
            configs=[ForecasterConfig.from_dict(m["config"]) for m in members],
            state_dicts=[m["state_dict"] for m in members],
        )

    def build(self) -> Forecaster:
        members = []
        for config, state in zip(self.configs, self.state_dicts, strict=True):
            member = RecurrentForecaster(config)
            member.load_state_dict(state)
            members.append(member.eval())
        return members[0] if len(members) == 1 else EnsembleForecaster(members).eval()
