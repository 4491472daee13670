"""Trainer callbacks: when to validate, and how long the optimizer steps take."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class EvalSchedule(TrainerCallback):
    """Validate, checkpoint and log `evals_per_epoch` times per epoch, at evenly spread steps that always include the
    epoch's last step, and at the run's last step. A fixed step interval cannot do that whenever it does not divide
    the steps per epoch (it missed every epoch end). A --max-steps run shorter than that still validates twice, so the
    best checkpoint is chosen among two."""

    def __init__(self, evals_per_epoch: int) -> None:
        self.evals_per_epoch = evals_per_epoch
        self.per_epoch, self.in_epoch, self.extra, self.last = 1, {1}, set(), 0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        # The Trainer's own count: batches per process, less any gradient accumulation (world size, DataParallel included).
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
