"""One optimisation step on a batch of triplets, and the optimizer and objective it steps.

Kept apart from the loop (:mod:`agman.engine.train`) so the step can change — separate forward
passes per image of the triplet, a fused optimizer, ``torch.compile`` — without touching resume,
logging or checkpoints; ``bench/gpu_train.py`` times exactly this class.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from functools import partial

import torch
from torch import nn

from agman.engine import distributed as D
from agman.engine.config import LossConfig, TrainConfig
from agman.engine.losses import TripletCriterion
from agman.errors import InvalidValueError
from agman.models.output import ModelOutput

log = logging.getLogger(__name__)


BN_PASSES = ("separate", "joint", "stacked")


class TrainStep:
    """One optimisation step on a batch of triplets: the three images through the model (bf16
    autocast where asked), the loss, backward, gradient averaging of the loss weights under DDP,
    optional clipping, the optimizer step.

    ``bn_passes``: ``separate`` runs anchors, negatives ("far") and positives ("close") as three
    passes of B, in that order, as the released Tripletnet does (BatchNorm normalises each set with
    its own statistics and updates its running statistics three times); ``joint`` runs them as one
    pass of 3B (one set of statistics, one update); ``stacked`` runs them as one pass of 3B in which
    every BatchNorm normalises and updates with each set's statistics in the order of ``separate``
    (:func:`batchnorm_per_set`): the result of ``separate`` within float rounding, at the speed of one
    pass."""

    def __init__(self, net: torch.nn.Module, criterion: TripletCriterion, optimizer: torch.optim.Optimizer,
                 device: torch.device, *, channels_last: bool = False, amp: bool = False, grad_clip: float = 0.0,
                 ctx: D.DistributedContext | None = None, bn_passes: str = "separate"):
        if bn_passes not in BN_PASSES:
            raise InvalidValueError(f"bn_passes must be one of {', '.join(BN_PASSES)}, got {bn_passes!r}")
        self.net, self.criterion, self.optimizer, self.device = net, criterion, optimizer, device
        self.channels_last, self.amp, self.grad_clip, self.bn_passes = channels_last, amp, grad_clip, bn_passes
        self.ctx = ctx or D.DistributedContext(device=device)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    @classmethod
    def for_run(cls, net: torch.nn.Module, criterion: TripletCriterion, optimizer: torch.optim.Optimizer,
                train: TrainConfig, ctx: D.DistributedContext) -> TrainStep:
        """The step a run with the ``train`` section takes on ``ctx.device``."""
        return cls(net, criterion, optimizer, ctx.device, channels_last=train.uses_channels_last(ctx.device),
                   amp=train.uses_amp(ctx.device), grad_clip=train.grad_clip, ctx=ctx, bn_passes=train.bn_passes)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def __call__(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, attrs: torch.Tensor):
        attrs = attrs.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext():
            if self.bn_passes == "joint":
                output = self.net(self._images(torch.cat([anchor, positive, negative])), attrs.repeat(3))
            elif self.bn_passes == "stacked":
                with batchnorm_per_set(self.net, 3):
                    out = self.net(self._images(torch.cat([anchor, negative, positive])), attrs.repeat(3))
                out_a, out_n, out_p = out.chunk(3)
                output = ModelOutput.cat([out_a, out_p, out_n])
            else:
                out_a = self.net(self._images(anchor), attrs)
                out_n = self.net(self._images(negative), attrs)
                out_p = self.net(self._images(positive), attrs)
                output = ModelOutput.cat([out_a, out_p, out_n])
        loss = self.criterion(output, attrs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        D.average_gradients(self.criterion.parameters(), self.ctx)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss


@contextmanager
def batchnorm_per_set(net: nn.Module, sets: int):
    """Within the block, every BatchNorm of ``net`` in training mode splits its input into ``sets``
    equal slices of the batch and normalises each with its own statistics, updating the running
    statistics once per slice in slice order: what ``sets`` separate passes would do."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for norm in norms:
        norm.forward = partial(_per_set, norm, type(norm).forward, sets)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _per_set(norm: nn.Module, forward, sets: int, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([forward(norm, part) for part in x.chunk(sets)])


def build_optimizer(train: TrainConfig, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params`` (SGD with momentum 0.9); Adam/AdamW fused on ``device``
    when ``train.fused_optimizer`` says so."""
    fused = {"fused": True} if device is not None and train.uses_fused_optimizer(device) else {}
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, **fused)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, **fused)
    return torch.optim.SGD(params, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay)


def build_criterion(loss: LossConfig, model: torch.nn.Module) -> TripletCriterion:
    """The ``loss`` section's objective; Eq. 7 only where asked for and the model has the branch."""
    has_branch = bool(getattr(model, "config", {}).get("classification", False))
    if loss.classification and not has_branch:
        log.info("model %s has no classification branch: training with the triplet loss only",
                 getattr(model, "name", type(model).__name__))
    return TripletCriterion(
        margin=loss.margin, classification=loss.classification and has_branch, weighting=loss.weighting,
        init=loss.weight_init, weights=loss.weights, mask_l1=loss.mask_l1, embed_l2=loss.embed_l2,
        local_weight=loss.local_weight, align_weight=loss.align_weight,
    )
