"""Checkpoints under ``<output_dir>/checkpoints/step-N``: written to a temporary name, then renamed.

A crash while writing leaves the previous checkpoint intact; resuming picks the newest complete one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator


def _steps(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    found = (
        [p for p in root.glob("step-*") if p.is_dir() and (p / "trainer_state.json").exists()] if root.exists() else []
    )
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = _steps(Path(output_dir))
    return found[-1] if found else None


def save(output_dir: str | Path, step: int, accelerator: Accelerator, schedule, state: dict, keep: int) -> Path:
    """Save model, optimizer, schedule, RNG and trainer state for ``step``; keep the newest ``keep``."""
    root = Path(output_dir) / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(schedule.state_dict(), tmp / "schedule.pt")
        torch.save(state.get("objective_state"), tmp / "objective_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        tmp.rename(final)
        for old in _steps(Path(output_dir))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, accelerator: Accelerator, schedule) -> dict:
    """Restore what :func:`save` wrote; returns the trainer state."""
    accelerator.load_state(str(path))
    schedule.load_state_dict(torch.load(path / "schedule.pt", weights_only=False))
    state = json.loads((path / "trainer_state.json").read_text())
    state["objective_state"] = torch.load(path / "objective_state.pt", weights_only=False)
    return state
