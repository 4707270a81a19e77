"""The training state inside one Ray Train checkpoint directory: write it (workers) and read it back (both sides)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.errors import EngineError

STATE_FILE = "train_state.pt"
"""Model, optimiser, scheduler and grad-scaler state dicts plus the epoch and step counters (torch.save)."""
POLICY_FILE = "policy.json"
"""Online threshold policy ``state_dict`` as plain JSON (absent when the online branch is off)."""
HISTORY_FILE = "history.json"
"""One metrics record per finished epoch, oldest first."""


@dataclass
class TrainState:
    """Everything needed to continue a run after its last finished epoch."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    epoch: int
    """Index of the last finished epoch (0-based); training resumes at ``epoch + 1``."""
    global_step: int
    scaler: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    ema: dict[str, Any] | None = None
    """``WeightEMA.state_dict()`` (averaged weights and update count) when ``train.ema_decay`` > 0."""
    best: dict[str, Any] | None = None
    """``{"epoch", "val_macro_f1", "model"}``: the best validated epoch and its (kept) weights, with
    ``train.select_best``."""


def write_train_state(directory: str, state: TrainState) -> None:
    """Write ``state`` as ``train_state.pt``, ``history.json`` and (if set) ``policy.json`` into ``directory``.

    Tensors are moved to the CPU; the files load with ``torch.load(weights_only=True)`` / ``json``.
    """
    payload = {
        "model": {k: v.detach().to("cpu") for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": state.scaler,
        "epoch": int(state.epoch),
        "global_step": int(state.global_step),
        "ema": None if state.ema is None else {**state.ema, "module": _cpu(state.ema["module"])},
        "best": None if state.best is None else {**state.best, "model": _cpu(state.best["model"])},
    }
    torch.save(payload, os.path.join(directory, STATE_FILE))
    with open(os.path.join(directory, HISTORY_FILE), "w", encoding="utf-8") as fh:
        json.dump(state.history, fh, indent=1, sort_keys=True)
    if state.policy is not None:
        with open(os.path.join(directory, POLICY_FILE), "w", encoding="utf-8") as fh:
            json.dump(state.policy, fh, sort_keys=True)


def read_train_state(directory: str) -> TrainState:
    """Read what :func:`write_train_state` wrote (tensors on the CPU).

    Raises:
        EngineError: ``train_state.pt`` is missing or unreadable (not a checkpoint of this trainer).
    """
    path = os.path.join(directory, STATE_FILE)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise EngineError(
            f"cannot read training state {path} ({type(exc).__name__}: {str(exc)[:200]}); the Ray Train checkpoint "
            "was not written by engine.train: start a run with a new run name"
        ) from None
    history_path = os.path.join(directory, HISTORY_FILE)
    policy_path = os.path.join(directory, POLICY_FILE)
    history: list[dict[str, Any]] = []
    if os.path.exists(history_path):
        with open(history_path, encoding="utf-8") as fh:
            history = json.load(fh)
    policy = None
    if os.path.exists(policy_path):
        with open(policy_path, encoding="utf-8") as fh:
            policy = json.load(fh)
    return TrainState(
        model=payload["model"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        scaler=payload.get("scaler"),
        epoch=int(payload["epoch"]),
        global_step=int(payload["global_step"]),
        policy=policy,
        history=history,
        ema=payload.get("ema"),
        best=payload.get("best"),
    )


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in tensors.items()}


LOCAL_EPOCH_PREFIX = "epoch_"
"""``<local checkpoint dir>/epoch_NNNNNN``: one committed epoch of an in-process run (``train.in_process``)."""


def save_local_state(parent: str, epoch: int, state: TrainState) -> str:
    """Commit ``state`` as ``parent/epoch_NNNNNN`` (written under a temporary name, then renamed: a crash leaves the
    previous epoch whole) and remove the older epochs; returns the new directory. Local disk only."""
    import shutil
    import tempfile

    os.makedirs(parent, exist_ok=True)
    final = os.path.join(parent, f"{LOCAL_EPOCH_PREFIX}{epoch:06d}")
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    write_train_state(tmp, state)
    if os.path.exists(final):  # the same epoch again (a re-run after a crash between commit and report)
        shutil.rmtree(final)
    os.rename(tmp, final)
    for name in os.listdir(parent):
        if name != os.path.basename(final) and (name.startswith(LOCAL_EPOCH_PREFIX) or name.startswith(".tmp-")):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return final


def latest_local_state(parent: str) -> str | None:
    """The newest committed ``parent/epoch_NNNNNN``, None when there is none."""
    if not os.path.isdir(parent):
        return None
    epochs = sorted(n for n in os.listdir(parent) if n.startswith(LOCAL_EPOCH_PREFIX))
    return os.path.join(parent, epochs[-1]) if epochs else None
