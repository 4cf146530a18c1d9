"""Training progress from funasr's log: loss/accuracy records, a progress bar and live curves.

funasr's trainer logs a ``train, rank: ...`` line every ``log_interval`` steps and,
after each epoch, ``Validate epoch: N`` then ``current_val: <loss>`` and an
accuracy line (``Update best acc: A`` or ``No improvement in acc: A < B``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainPoint", "ValPoint", "Progress"]

_TRAIN = re.compile(
    r"train, rank: 0, epoch: (?P<epoch>\d+)/(?P<max_epoch>\d+), data_slice: \d+/\d+, "
    r"step_in_slice: (?P<step>\d+)/(?P<steps>\d+), step_in_epoch: \d+, total step: (?P<total>\d+), "
    r"\(loss_avg_rank: [^)]*\), \(loss_avg_slice: (?P<loss>[-\d.e+naif]+)\), \(ppl_avg_slice: [^)]*\), "
    r"\(acc_avg_slice: (?P<acc>[-\d.e+naif]+)\), \(lr: (?P<lr>[-\d.e+]+)\)")
_VAL_EPOCH = re.compile(r"Validate epoch: (\d+), rank: 0")
_VAL_LOSS = re.compile(r"current_val: ([-\d.e+naif]+)")
_VAL_ACC = re.compile(r"(?:Update best acc: ([-\d.e+]+)|No improvement in acc: ([-\d.e+]+) <)")


def _num(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class TrainPoint:
    epoch: int
    step: int  # total optimizer-loop steps so far
    loss: float
    acc: float
    lr: float


@dataclass
class ValPoint:
    epoch: int  # 1-based: after this many epochs
    loss: float | None = None
    acc: float | None = None


@dataclass
class Progress:
    """Consumes log lines; keeps curves; optionally drives a tqdm bar and a live figure."""

    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    max_epoch: int = 0
    steps_per_epoch: int = 0
    live: bool = False
    _bar: Any = None
    _handle: Any = None

    def feed(self, line: str) -> None:
        m = _TRAIN.search(line)
        if m:
            p = TrainPoint(int(m["epoch"]), int(m["total"]), float(m["loss"]), float(m["acc"]), float(m["lr"]))
            self.train.append(p)
            self.max_epoch, self.steps_per_epoch = int(m["max_epoch"]), int(m["steps"])
            self._update_bar(p.epoch, int(m["step"]))
            return
        m = _VAL_EPOCH.search(line)
        if m:
            self.val.append(ValPoint(int(m.group(1))))
            return
        if self.val:
            m = _VAL_LOSS.search(line)
            if m and self.val[-1].loss is None:
                self.val[-1].loss = float(m.group(1))
                return
            m = _VAL_ACC.search(line)
            if m and self.val[-1].acc is None:
                self.val[-1].acc = float(m.group(1) or m.group(2))
                self._redraw()

    def _update_bar(self, epoch: int, step: int) -> None:
        if not self.live:
            return
        from tqdm.auto import tqdm

        if self._bar is None or self._bar.desc != f"epoch {epoch + 1}/{self.max_epoch}":
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.max_epoch}", unit="step")
        self._bar.n = step
        self._bar.refresh()

    def figure(self) -> Any:
        """Loss and accuracy against epochs: training (per logged step) and dev (per epoch)."""
        import matplotlib.pyplot as plt

        fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.2))
        spe = max(1, self.steps_per_epoch)
        if self.train:
            first = self.train[0].step - 1
            x = [(p.step - first) / spe for p in self.train]
            ax_l.plot(x, [p.loss for p in self.train], label="train")
            ax_a.plot(x, [p.acc for p in self.train], label="train")
        done = [v for v in self.val if v.loss is not None]
        if done:
            ax_l.plot([v.epoch for v in done], [v.loss for v in done], "o-", label="dev")
            acc = [v for v in done if v.acc is not None]
            ax_a.plot([v.epoch for v in acc], [v.acc for v in acc], "o-", label="dev (teacher-forced)")
        ax_l.set(xlabel="epoch", ylabel="loss", title="loss")
        ax_a.set(xlabel="epoch", ylabel="accuracy", title="token accuracy")
        for ax in (ax_l, ax_a):
            ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def _redraw(self) -> None:
        if not self.live:
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)

    def load_checkpoint_metrics(self, checkpoint: Any) -> None:
        """Complete the dev curves from funasr's last checkpoint (its per-epoch val_loss / val_acc records) and
        show the final figure (live: in place of the running one)."""
        import torch

        if not Path(checkpoint).is_file():
            return
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        losses, accs = state.get("val_loss_step_or_epoch", {}), state.get("val_acc_step_or_epoch", {})
        points = []
        for name in sorted(set(losses) | set(accs), key=lambda n: [int(x) for x in re.findall(r"\d+", n)]):
            m = re.fullmatch(r"model\.pt\.ep(\d+)", name)
            if m:
                points.append(ValPoint(int(m.group(1)), _num(losses.get(name)), _num(accs.get(name))))
        if points:
            self.val = points
        self._redraw()  # the live figure becomes the final one (the log prints dev loss only when it improves)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
