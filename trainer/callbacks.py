"""Trainer callbacks: when to validate, how long the optimizer steps take, and what a run prints."""

from __future__ import annotations

import time
from typing import Sequence

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


class EvalSchedule(TrainerCallback):
    """Validate, checkpoint and log `evals_per_epoch` times per epoch, at evenly spread steps that always include the
    epoch's last step, and at the run's last step. A fixed step interval cannot do that whenever it does not divide
    the steps per epoch (it missed every epoch end). A --max-steps run shorter than that still validates twice, so the
    best checkpoint is chosen among two."""

    def __init__(self, evals_per_epoch: int) -> None:
        self.evals_per_epoch = evals_per_epoch
        self.per_epoch, self.in_epoch, self.extra, self.last = 1, {1}, set(), 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        # The Trainer's own count: batches per process, less any gradient accumulation (world size, DataParallel
        # included).
        self.per_epoch = max(1, len(train_dataloader) // args.gradient_accumulation_steps)
        n = min(self.evals_per_epoch, self.per_epoch)
        self.in_epoch = {round(k * self.per_epoch / n) for k in range(1, n + 1)}
        self.last, self.extra = state.max_steps, set()
        if sum(self.due(step) for step in range(1, state.max_steps + 1)) < 2:
            self.extra = {max(1, state.max_steps // 2)}

    def due(self, step: int) -> bool:
        return (step - 1) % self.per_epoch + 1 in self.in_epoch or step == self.last or step in self.extra

    def on_step_end(self, args, state, control, **kwargs):
        if self.due(state.global_step):
            control.should_evaluate = control.should_save = control.should_log = True
        return control


class StepTimer(TrainerCallback):
    """Adds up the wall time of the optimizer steps (forward, backward, update), so samples/s counts training work
    only, not evaluation or checkpoint saving."""

    def __init__(self) -> None:
        self.seconds, self.steps, self._t0 = 0.0, 0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._t0
        self.steps += 1


class EvalLines(ProgressCallback):
    """The Trainer's progress bars, with one readable line per validation point in place of its raw log dicts:
    step, epoch, the training loss, and the validation loss and MCC of each eval set (CoLA's all / in / out)."""

    def __init__(self, eval_sets: Sequence[str]) -> None:
        super().__init__()
        self.eval_sets, self.pending = tuple(eval_sets), {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        if "loss" in logs:
            self.pending["train_loss"] = logs["loss"]
        for name in self.eval_sets:
            if f"eval_{name}_mcc" in logs:
                self.pending[name] = logs
        if all(name in self.pending for name in self.eval_sets):  # the Trainer logs each eval set on its own
            self.training_bar.write(self.line(state.global_step, state.max_steps, state.epoch or 0.0))
            self.pending = {}

    def line(self, step: int, steps: int, epoch: float) -> str:
        first = self.pending[self.eval_sets[0]]
        loss = first.get(f"eval_{self.eval_sets[0]}_loss")
        mccs = " / ".join(f"{name} {self.pending[name][f'eval_{name}_mcc']:.3f}" for name in self.eval_sets)
        f1 = first.get(f"eval_{self.eval_sets[0]}_macro_f1")
        return (
            f"step {step:>{len(str(steps))}}/{steps}  epoch {epoch:.2f}  train loss "
            f"{_num(self.pending.get('train_loss'))}"
            f"  eval loss {_num(loss)}  MCC {mccs}" + (f"  macro-F1 {f1:.3f}" if f1 is not None else "")
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
