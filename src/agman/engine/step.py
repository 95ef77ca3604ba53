"""One optimisation step on a batch of triplets, and the optimizer and objective it steps.

Kept apart from the loop (:mod:`agman.engine.train`) so the step can change — separate forward
passes per image of the triplet, a fused optimizer, ``torch.compile`` — without touching resume,
logging or checkpoints; ``bench/gpu_train.py`` times exactly this class.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from agman.engine import distributed as D
from agman.engine.config import LossConfig, TrainConfig
from agman.engine.losses import TripletCriterion

log = logging.getLogger(__name__)


class TrainStep:
    """One optimisation step on a batch of triplets: the three images through the model as one
    batch of 3B (bf16 autocast where asked), the loss, backward, gradient averaging of the loss
    weights under DDP, optional clipping, the optimizer step."""

    def __init__(self, net: torch.nn.Module, criterion: TripletCriterion, optimizer: torch.optim.Optimizer,
                 device: torch.device, *, channels_last: bool = False, amp: bool = False, grad_clip: float = 0.0,
                 ctx: D.DistributedContext | None = None):
        self.net, self.criterion, self.optimizer, self.device = net, criterion, optimizer, device
        self.channels_last, self.amp, self.grad_clip = channels_last, amp, grad_clip
        self.ctx = ctx or D.DistributedContext(device=device)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, attrs: torch.Tensor):
        images = torch.cat([anchor, positive, negative]).to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        attrs = attrs.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext():
            output = self.net(images, attrs.repeat(3))
        loss = self.criterion(output, attrs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        D.average_gradients(self.criterion.parameters(), self.ctx)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return loss


def build_optimizer(train: TrainConfig, params) -> torch.optim.Optimizer:
    """``train.optimizer`` over ``params`` (SGD with momentum 0.9)."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
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
    )
