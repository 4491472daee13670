"""Length-grouped batches in an order every process agrees on and that --resume replays.

transformers' own LengthGroupedSampler (group_by_length=True) draws its order from the global random state. Under
torchrun each process drew a different order, so the shards overlapped: some rows were trained (and validated) twice
and others never, and dev MCC was computed on the wrong rows. On --resume it drew a new order for the epoch it
stopped in, so the rest of that epoch was not the rest of the interrupted one. Here the same grouping
(`get_length_grouped_indices`) is drawn from a generator seeded with the data seed and the epoch.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_pt_utils import get_length_grouped_indices


class SeededLengthSampler:
    """Row indices in batches of similar length; the order depends only on (seed, epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate calls it at the start of every epoch, also a resumed one
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class LengthGroupedTrainer(Trainer):
    """The HF Trainer; with group_by_length its training and validation batches come from SeededLengthSampler
    (training: a new order each epoch; validation: one fixed order). It also loads a --resume checkpoint's optimizer
    state under torchrun on CPU (see _load_optimizer_and_scheduler)."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Under torchrun on CPU the Trainer loads optimizer.pt onto args.device, which accelerate makes
        # torch.device("cpu", rank), and torch.load has no restorer for "cpu:0": every CPU DDP --resume failed with
        # "don't know how to restore data location of torch.storage.UntypedStorage (tagged with cpu:0)".
        # Load it as the Trainer does on one process (onto the CPU); GPUs and single processes keep its own code.
        device = self.args.device
        if (
            checkpoint is None
            or device.type != "cpu"
            or device.index is None
            or self.is_deepspeed_enabled
            or self.is_fsdp_enabled
        ):
            return super()._load_optimizer_and_scheduler(checkpoint)
        optimizer, scheduler = os.path.join(checkpoint, OPTIMIZER_NAME), os.path.join(checkpoint, SCHEDULER_NAME)
        if os.path.isfile(optimizer) and os.path.isfile(scheduler):  # the Trainer's own condition
            self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(torch.load(scheduler, weights_only=True))

    def _lengths(self, dataset) -> list[int]:
        return [len(ids) for ids in dataset["input_ids"]]

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.args.group_by_length or dataset is None:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthSampler(self._lengths(dataset), batch, self.args.data_seed or self.args.seed)

    def _get_eval_sampler(self, eval_dataset):
        if not self.args.group_by_length or eval_dataset is None:
            return super()._get_eval_sampler(eval_dataset)
        return SeededLengthSampler(
            self._lengths(eval_dataset), self.args.eval_batch_size, self.args.data_seed or self.args.seed
        )
