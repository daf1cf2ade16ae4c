"""Where metrics go: a JSONL file, TensorBoard, and training-curve plots at the end of a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    """Appends one JSON line per logged step to ``<dir>/metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: str | Path, tensorboard: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.directory / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def images(self, step: int, grid) -> Path:
        """Save a PIL image grid as ``samples/step-N.png`` and to TensorBoard."""
        path = self.directory / "samples" / f"step-{step:06d}.png"
        path.parent.mkdir(exist_ok=True)
        grid.save(path)
        if self.writer is not None:
            import numpy as np

            self.writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
            self.writer.flush()
        return path

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (a resumed run rewrites them; -1 drops all)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Loss, implicit-reward accuracy and margin over steps (train and eval) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    panels = [
        ("loss", "loss"),
        ("rewards/accuracies", "implicit-reward accuracy"),
        ("rewards/margins", "reward margin"),
    ]
    panels = [(key, title) for key, title in panels if any(key in r or f"eval/{key}" in r for r in records)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for prefix, style in (("", "-"), ("eval/", "o-")):
            points = [(r["step"], r[prefix + key]) for r in records if prefix + key in r]
            if points:
                ax.plot(*zip(*points), style, label="eval" if prefix else "train", markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
