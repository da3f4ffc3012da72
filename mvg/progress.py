"""Training progress as one line per logged step, for the person watching the command.

Training runs in Ray Train workers, whose output Ray forwards to the driver line by line with a
`(RayTrainWorker pid=...)` prefix; a tqdm bar redrawn with carriage returns does not survive that,
so rank 0 writes a plain line to stderr at every `log_every` step (stdout stays free for results
and `--json`). The same lines serve the single-process loop (`mvg finetune`).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class TrainingProgress:
    """`line(row)` for a metrics row of `mvg.train.Meter.report`: step/total, loss, episodes/s and
    the time left. The time left comes from the pace since this launch's first report (a resumed
    run counts only its own steps), which is steadier than one window's; at the first report, from
    that window's episodes/s and `episodes_per_step` (all workers' micro-batches of a step)."""

    def __init__(self, total: int, episodes_per_step: int, label: str = "train", stream: TextIO | None = None):
        self.total = total
        self.episodes_per_step = episodes_per_step
        self.label = label
        self.stream = stream
        self.first: tuple[int, float] | None = None  # (step, time) of this launch's first report

    def line(self, row: dict, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        step = int(row["step"])
        if self.first is None:
            self.first = (step, now)
        first_step, first_time = self.first
        parts = [f"{self.label} step {step}/{self.total}", f"loss {row['loss']:.4f}", f"{row['episodes_per_s']:.1f} episodes/s"]
        if step > first_step and now > first_time:
            seconds_per_step = (now - first_time) / (step - first_step)
        else:
            seconds_per_step = self.episodes_per_step / max(row["episodes_per_s"], 1e-9)
        parts.append(f"ETA {clock(seconds_per_step * (self.total - step))}")
        return "  ".join(parts)

    def __call__(self, row: dict) -> None:
        """Write the row's line, flushed: Ray forwards a worker's output as it is written. Written,
        not printed: inside a flow Prefect turns prints into log records, which its log level
        may hide."""
        stream = self.stream or sys.stderr
        stream.write(self.line(row) + "\n")
        stream.flush()


def clock(seconds: float) -> str:
    """12 s, 3m05s, 1h02m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
