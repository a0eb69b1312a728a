"""The training loop: Adam on pinball loss, early stopping on the validation window."""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from training.data import Split
from training.model import Forecaster, ForecasterConfig, RecurrentForecaster

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, float], None]


@dataclass
class TrainConfig:
    max_epochs: int = 500
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 50  # epochs without a better validation loss before stopping
    grad_clip: float = 1.0
    seed: int = 0
    # "scaled": errors in units of each window's std (series of any level weigh the same).
    # "relative": for log models, errors in log units, i.e. relative errors, as sMAPE and
    # MAPE score them (smooth series are not magnified by a small std).
    loss_units: Literal["scaled", "relative"] = "scaled"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    model: RecurrentForecaster
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    seconds: float  # all of it: early-stopped run and refit
    history: list[dict[str, float]] = field(default_factory=list)
    refit_epochs: int = 0  # > 0: the weights come from a refit through the validation window


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pinball_loss(pred: torch.Tensor, target: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss. pred (B, H, Q), target (B, H), quantiles (Q,).

    Both are on each window's own scale, so every series weighs the same whatever its level;
    for q=0.5 this is half the mean absolute error.
    """
    error = target.unsqueeze(-1) - pred  # (B, H, Q)
    return torch.maximum(quantiles * error, (quantiles - 1) * error).mean()


def _loss(
    model: RecurrentForecaster,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    q: torch.Tensor,
    units: str,
) -> torch.Tensor:
    x, y, position = batch  # (B, L), (B, H), (B,)
    pred, loc, scale = model.forward_scaled(x, position)
    target = model.scale_target(y, loc, scale)
    if units == "relative":
        weight = scale.float().unsqueeze(-1)  # (B, 1, 1): back to log units
        return pinball_loss(pred * weight, target * weight.squeeze(-1), q)
    return pinball_loss(pred, target, q)


def fit(
    model_config: ForecasterConfig,
    train_config: TrainConfig,
    split: Split,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train from scratch, or from ``initial_state`` (fine-tuning); return the weights of the
    epoch with the lowest validation loss.

    A split without validation windows (a refit) trains for ``max_epochs`` and returns the
    last weights; its validation losses are NaN.
    """
    if not len(split.train_x):
        raise ValueError(
            f"no training windows: every series is shorter than input_size "
            f"{model_config.input_size} + 3 x horizon {model_config.horizon} (or padding allows)"
        )
    if train_config.loss_units == "relative" and model_config.transform != "log":
        raise ValueError("loss_units='relative' needs transform='log' (errors in log units)")
    seed_everything(train_config.seed)
    model = RecurrentForecaster(model_config)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    quantiles = torch.tensor(model_config.quantiles, dtype=torch.float32)
    train = [torch.from_numpy(a) for a in (split.train_x, split.train_y, split.train_pos)]
    val = tuple(torch.from_numpy(a) for a in (split.val_x, split.val_y, split.val_pos))
    generator = torch.Generator().manual_seed(train_config.seed)

    best_state, best_val, best_epoch = copy.deepcopy(model.state_dict()), float("inf"), 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = tqdm(range(1, train_config.max_epochs + 1), desc="epochs", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(split.train_x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), train_config.batch_size):
            idx = order[start : start + train_config.batch_size]
            optimizer.zero_grad()
            batch = (train[0][idx], train[1][idx], train[2][idx])
            loss = _loss(model, batch, quantiles, train_config.loss_units)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        model.eval()
        val_loss = float("nan")
        if len(split.val_x):
            with torch.no_grad():
                val_loss = _loss(model, val, quantiles, train_config.loss_units).item()
        train_loss = total / count
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        if on_epoch is not None:
            on_epoch(epoch, train_loss, val_loss)
        if val_loss < best_val or not len(split.val_x):
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=best_epoch)
        if epoch - best_epoch >= train_config.patience:
            logger.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        model=model,
        best_epoch=best_epoch,
        best_val_loss=best_val,
        epochs_run=len(history),
        seconds=time.perf_counter() - started,
        history=history,
    )


def refit(
    model_config: ForecasterConfig,
    train_config: TrainConfig,
    chosen: FitResult,
    split: Split,
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> FitResult:
    """Train again from the start (new weights, or ``initial_state`` when fine-tuning), for
    the epochs early stopping chose, on windows that reach through the validation window
    (``holdout_split(..., include_validation=True)``).

    Early stopping needs the latest horizon held out; the served model should not do without
    it: those are the values closest to what it will forecast.
    """
    if len(split.val_x):
        raise ValueError("refit takes a split whose training windows include validation")
    again = fit(
        model_config,
        replace(train_config, max_epochs=max(1, chosen.best_epoch)),
        split,
        on_epoch=on_epoch,
        progress=progress,
        initial_state=initial_state,
    )
    return replace(
        chosen,
        model=again.model,
        epochs_run=chosen.epochs_run + again.epochs_run,
        seconds=chosen.seconds + again.seconds,
        refit_epochs=again.epochs_run,
    )


def predict(
    model: Forecaster, windows: np.ndarray, positions: np.ndarray | None = None
) -> np.ndarray:
    """Raw windows (B, L) [and calendar positions (B,)] -> forecasts (B, H, Q) with torch (the
    reference for parity)."""
    y = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    position = None if positions is None else torch.from_numpy(positions.astype(np.float32))
    with torch.no_grad():
        return model(y, position).numpy()
