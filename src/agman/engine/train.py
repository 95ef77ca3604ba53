"""Training (§2.4, §3.1): fresh triplets every epoch, Eq. 7–9 losses, validation MAP model
selection, atomic best/last checkpoints, exact resume, DDP, and logs you can watch.

A run is a few named steps, in this order (:func:`train`): open the data, warm the backbone up
(a fresh run with ``warmup.epochs``), :func:`build_state` (model, objective, optimizer, schedule),
:func:`restore` it from ``last.pt`` when resuming, then per epoch :meth:`Run.run_epoch`,
:meth:`Run.validate` and :meth:`Run.save`.  The step itself is :mod:`agman.engine.step`, the
batches :mod:`agman.engine.batches`, the logs :mod:`agman.engine.runlog`.

Determinism (what makes ``--resume`` end with the weights of an uninterrupted run on CPU):

* epoch ``e``'s triplets are ``sampler.epoch(e)`` — a function of (seed, e) — in that order
  (their order is already random; under DDP rank ``r`` takes rows ``r, r+W, ...``);
* the random augmentation of triplet row ``i`` of epoch ``e`` runs under a torch seed made of
  (seed, e, i), so it does not depend on worker processes, prefetching or where a run resumed;
* batches cover rows ``[k*B, (k+1)*B)``; a run interrupted after step ``k`` resumes at ``k``;
* the checkpoint holds model, optimizer, scheduler, loss weights, RNG states (torch, CUDA,
  numpy, python), the epoch, the step within it, the best score and the history;
* the global RNGs are seeded (``train.seed``) right before the model is built, after the
  warm-up, so a fresh run's initial weights depend on the seed alone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from agman.data.cache import triplet_dataset
from agman.data.spec import DatasetSpec
from agman.data.triplets import make_sampler
from agman.engine import distributed as D
from agman.engine.batches import EpochTriplets, epoch_loader
from agman.engine.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint, unwrap
from agman.engine.config import RunConfig, save_config
from agman.engine.evaluate import embed_split, evaluate_embeddings
from agman.engine.losses import TripletCriterion
from agman.engine.rng import rng_state, seed_everything, set_rng_state
from agman.engine.runlog import RunLog, epoch_line
from agman.engine.stages import STAGE1_DIR, train_stages
from agman.engine.step import TrainStep, build_criterion, build_optimizer
from agman.engine.stopping import StopFlag
from agman.errors import AlreadyExistsError, InvalidValueError, NotFoundError
from agman.models.small_maps import matmul_on_small_maps

log = logging.getLogger(__name__)



@dataclass
class TrainResult:
    run_dir: Path
    last_path: Path
    best_path: Path | None
    best_score: float
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False
    model: torch.nn.Module | None = None  # the trained module (this process's replica), last state
    criterion: TripletCriterion | None = None
    warmup_trunk: Path | None = None  # the warm-up trunk this run started from (fresh runs with warmup)


def busy_cores_advice(threads: int, load: float | None = None, cores: int | None = None) -> str:
    """A warning when ``threads`` > 1 and the machine's 1-minute load already fills its cores ("" otherwise):
    there each parallel region waits for a descheduled thread (issue #25: a demo step took 10-15 s
    with 2 threads against 2 s with 1 at load 9 on 2 cores)."""
    if threads <= 1:
        return ""
    if load is None:
        if not hasattr(os, "getloadavg"):
            return ""
        load = os.getloadavg()[0]
    cores = cores or os.cpu_count() or 1
    if load < cores:
        return ""
    return (f"the load average ({load:.1f}) already fills this machine's {cores} cores: {threads} torch threads "
            f"will mostly wait for each other; train.threads=1 is often several times faster here")


# --------------------------------------------------------------------------- the steps of a run
def find_resume(resume: bool | str | Path, run_dir: Path) -> Path | None:
    """The checkpoint ``--resume`` names: True = ``run_dir/last.pt``; a run folder = its ``last.pt`` (a
    two-stage run still in stage 1: ``s1/last.pt``, :mod:`agman.engine.stages`)."""
    if not resume:
        return None
    path = run_dir if resume is True else Path(resume)
    if resume is True or path.is_dir():
        first_stage = path / STAGE1_DIR / LAST
        path = first_stage if not (path / LAST).is_file() and first_stage.is_file() else path / LAST
    if not path.is_file():
        raise NotFoundError(f"nothing to resume: {path} not found")
    return path


def open_training_data(config: RunConfig, ctx: D.DistributedContext, progress: bool) -> DatasetSpec:
    """The dataset (rank 0 renders the synthetic set, if any, and with ``data.cache`` fills the
    decoded-image cache, before the others open it); the validation split is checked now, not
    after the first epoch."""
    spec = config.data.open(progress=progress) if ctx.is_main else None
    if spec is not None and config.data.cache:
        fill_cache(spec, config.data.input_size, config.data.crop_ratio, progress)
    D.barrier(ctx)
    if spec is None:
        spec = config.data.open()
    spec.split("train")
    spec.split(config.eval.split)
    return spec


def fill_cache(spec: DatasetSpec, input_size: int, crop_ratio: float, progress: bool) -> None:
    """Every split of ``spec`` into the decoded-image cache (``agman data cache``; the images not
    cached yet): training, the warm-up and evaluation then read the same pixels without decoding."""
    from agman.data.cache import build_cache

    for name in spec.splits:
        split = spec.split(name)
        report = build_cache(split.paths, spec.root, input_size, crop_ratio, progress=progress, label=name)
        if report.new:
            log.info("decoded-image cache: %d %s images cached in %.1f s", report.new, name, report.seconds)


def warm_up(config: RunConfig, spec: DatasetSpec, run_dir: Path, ctx: D.DistributedContext, progress: bool) -> Path:
    """The ``warmup`` section: value-classification pre-training of the configured backbone on the
    train split (:mod:`agman.engine.pretrain`), run by rank 0 and reused from the run folder when a
    trunk with the same settings is there; returns the trunk file for ``pretrained``."""
    from agman.engine.pretrain import pretrain_backbone
    from agman.models.registry import trunk_arch

    pretrained = config.model.options.get("pretrained", "none")
    if str(pretrained).lower() not in ("none", ""):
        raise InvalidValueError(f"warmup.epochs={config.warmup.epochs} replaces model.pretrained="
                                f"{pretrained!r}: set one of them")
    wcfg, tcfg, dcfg = config.warmup, config.train, config.data
    settings = dict(backbone=trunk_arch(config.model.name, config.model.options), input_size=dcfg.input_size,
                    crop_ratio=dcfg.crop_ratio, epochs=wcfg.epochs, batch_size=wcfg.batch_size, lr=wcfg.lr, seed=tcfg.seed)
    if tcfg.small_map_matmul:  # in the file name's hash only when on: other rounding, another trunk file
        settings["small_map_matmul"] = True
    key = hashlib.sha256(json.dumps([str(spec.root), spec.name, settings], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(wcfg.dir) if wcfg.dir else run_dir
    path = folder / f"warmup-{settings['backbone']}-{key}.pth"
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        result = pretrain_backbone(spec, path, **settings, workers=tcfg.workers, device=ctx.device,
                                   amp=tcfg.uses_amp(ctx.device), channels_last=tcfg.uses_channels_last(ctx.device),
                                   progress=progress)
        if result.epochs:
            log.info("backbone warm-up: %d epochs in %.0f s, value cross-entropy %.4f -> %s",
                     result.epochs, result.seconds, result.final_loss, path)
    D.barrier(ctx)
    return path


@dataclass
class TrainState:
    """What a run changes and ``last.pt`` keeps: weights, objective, optimizer, schedule, where the
    run is (``epoch`` and ``step`` within it) and its record."""

    model: torch.nn.Module
    criterion: TripletCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    epoch: int = 0
    step: int = 0
    best_score: float = -math.inf
    history: list[dict] = field(default_factory=list)


def build_state(config: RunConfig, n_attributes: int, device: torch.device, pretrained: Path | None) -> TrainState:
    """A fresh state: the global RNGs seeded, the model built (on the warm-up trunk when given)."""
    seed_everything(config.train.seed)
    model = config.model.build(n_attributes, **({"pretrained": str(pretrained)} if pretrained else {}))
    if config.train.small_map_matmul:
        matmul_on_small_maps(model)
    criterion = build_criterion(config.loss, model)
    model.to(device, memory_format=torch.channels_last if config.train.uses_channels_last(device)
             else torch.preserve_format)
    criterion.to(device)
    slow = {id(p) for p in getattr(model, "slow_parameters", list)() if p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in slow] + list(criterion.parameters())
    if slow:  # ASEN++ stage 2: the global branch at train.slow_lr, as its build_optimizer does
        rate = config.train.slow_lr if config.train.slow_lr is not None else config.train.lr
        params = [{"params": params}, {"params": [p for p in model.parameters() if id(p) in slow], "lr": rate}]
    optimizer = build_optimizer(config.train, params, device)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.train.lr_step, gamma=config.train.lr_gamma)
    return TrainState(model, criterion, optimizer, scheduler)


def restore(state: TrainState, path: Path, config: RunConfig, ctx: D.DistributedContext) -> None:
    """Load ``last.pt`` into ``state``: weights, objective, optimizer, schedule, RNGs, position, record."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt["model_name"] != config.model.name:
        raise InvalidValueError(f"{path} holds a {ckpt['model_name']!r} model; the config trains {config.model.name!r}")
    if "optimizer" not in ckpt:
        raise InvalidValueError(f"{path} has no training state to resume from (is it a best.pt?)")
    state.model.load_state_dict(ckpt["state_dict"])
    state.criterion.load_state_dict(ckpt["loss_state"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    state.epoch, state.step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
    state.best_score = float(ckpt.get("best_score", -math.inf))
    state.history = list(ckpt.get("history", []))
    if int(ckpt.get("world_size", 1)) != ctx.world_size:
        log.warning("resuming a %d-process run with %d processes: the triplet shards differ",
                    int(ckpt.get("world_size", 1)), ctx.world_size)
    log.info("resuming %s at epoch %d, step %d", path, state.epoch + 1, state.step)


def start_from_stage(model: torch.nn.Module, path: Path) -> None:
    """Load an earlier stage's weights (``path``) into a fresh ``model``: every tensor of the file must fit;
    the model's parts the file lacks (ASEN++'s local branch) keep their initialisation."""
    ckpt = load_checkpoint(path, map_location="cpu")
    result = model.load_state_dict(ckpt["state_dict"], strict=False)
    if result.unexpected_keys:
        raise InvalidValueError(f"{path}: tensors the next stage's model has no place for: "
                                f"{', '.join(result.unexpected_keys[:6])}")
    log.info("starting from %s (epoch %s); %d tensors new in this stage", path, ckpt.get("epoch"),
             len(result.missing_keys))


def _wrap(model: torch.nn.Module, config: RunConfig, ctx: D.DistributedContext) -> torch.nn.Module:
    """The module the step calls: DDP (with SyncBatchNorm if asked) and ``torch.compile`` around the model."""
    net = model
    if ctx.enabled:
        if config.train.sync_bn:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=config.train.find_unused_parameters,
        )
    return torch.compile(net) if config.train.compile else net


class Run:
    """One training run over a built (or restored) :class:`TrainState`: epochs, validation, checkpoints."""

    def __init__(self, config: RunConfig, ctx: D.DistributedContext, spec: DatasetSpec, state: TrainState,
                 run_dir: Path, progress: bool, stop: Callable[[int, int], bool] | None = None):
        self.config, self.ctx, self.spec, self.state, self.run_dir = config, ctx, spec, state, run_dir
        self.progress, self.stop = progress, stop
        tcfg, dcfg, device = config.train, config.data, ctx.device
        self.net = _wrap(state.model, config, ctx)
        train_split = spec.split("train")
        self.sampler = make_sampler(train_split, tcfg.triplets_per_epoch, tcfg.seed, tcfg.sampling)
        images = triplet_dataset(train_split.paths, spec.root, input_size=dcfg.input_size, crop_ratio=dcfg.crop_ratio)
        dataset = EpochTriplets(self.sampler, images, tcfg.seed, ctx.rank, ctx.world_size)
        self.loader, self.batches = epoch_loader(dataset, tcfg, device)
        self.amp = tcfg.uses_amp(device)
        if self.amp and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            log.warning("train.amp=bf16 on a CPU without native bf16 instructions is slow; "
                        "train.amp=none is faster here")
        self.step_fn = TrainStep.for_run(self.net, state.criterion, state.optimizer, tcfg, ctx)
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, run_dir / "config.yaml")
        self.runlog = RunLog(run_dir, ctx.is_main, config.output.tensorboard)
        if state.history:
            self.runlog.epoch(state.history)
        elif state.step == 0:  # a fresh run (a resumed one recorded its hyper-parameters when it began)
            self.runlog.hparams(config.to_dict(), [f"{config.eval.split}/score"]
                                + [f"{config.eval.split}/map_{a}" for a in spec.attribute_names])
        self.global_step = state.epoch * self.batches.steps + state.step

    def fit(self) -> bool:
        """Epochs from where the state is to ``train.epochs``; False when stopped early (checkpointed)."""
        state, epochs = self.state, self.config.train.epochs
        log.info("training %s on %s (%d train images, %d triplets/epoch, batch %d x %d process(es)) on %s%s -> %s",
                 self.config.model.name, self.spec.name, len(self.spec.split("train")), len(self.sampler),
                 self.config.train.batch_size, self.ctx.world_size, self.ctx.device, " (bf16)" if self.amp else "",
                 self.run_dir)
        with StopFlag() as flag:
            for epoch in range(state.epoch, epochs):
                row = self.run_epoch(epoch, state.step if epoch == state.epoch else 0, flag)
                if row is None:
                    return False
                metrics = self.validate(epoch, row)
                state.history.append(row)
                if row.get("best"):
                    self.save(self.run_dir / BEST, epoch + 1, 0, metrics, with_state=False)
                self.save(self.run_dir / LAST, epoch + 1, 0, metrics)
                self.runlog.epoch(state.history)
                log.info("epoch %d/%d: %s", epoch + 1, epochs,
                         epoch_line(row, self.config.eval.split, state.best_score))
                D.barrier(self.ctx)
        return True

    def run_epoch(self, epoch: int, first_step: int, flag: StopFlag) -> dict | None:
        """Steps ``first_step ..`` of ``epoch``, then the schedule's step; the epoch's log row, or
        None when a stop was asked for (``last.pt`` then holds the state after the last step)."""
        state, ctx, batch = self.state, self.ctx, self.config.train.batch_size
        self.batches.set_epoch(epoch, first_step)
        self.net.train()
        sums: dict[str, float] = {}
        seen, t0 = 0, time.perf_counter()
        bar = tqdm(total=self.batches.steps * batch, initial=first_step * batch, unit="triplet", unit_scale=True,
                   desc=f"epoch {epoch + 1}/{self.config.train.epochs}", disable=not self.progress, leave=False,
                   dynamic_ncols=True)
        step = first_step
        for anchor, positive, negative, attrs in self.loader:
            loss = self.step_fn(anchor, positive, negative, attrs)
            step += 1
            self.global_step += 1
            n = len(attrs)
            seen += n
            for k, v in loss.parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            bar.update(n)
            bar.set_postfix(loss=f"{float(loss.total.detach()):.4f}", refresh=False)
            if self.global_step % self.config.output.log_every == 0:
                weights = state.criterion.weighting.effective_weights()
                self.runlog.scalars({f"train/{k}": float(v.detach()) for k, v in loss.parts.items()}
                                    | {"train/lr": state.optimizer.param_groups[0]["lr"]}
                                    | {f"weights/{k}": w for k, w in weights.items()}, self.global_step)
            want_stop = D.broadcast_flag(flag.requested or bool(self.stop and self.stop(epoch, step)), ctx)
            every = self.config.train.checkpoint_every_steps
            if want_stop or (every and step % every == 0 and step < self.batches.steps):
                D.broadcast_buffers(unwrap(self.net), ctx)
                self.save(self.run_dir / LAST, epoch, step, {})
            if want_stop:
                bar.close()
                log.info("stopped in epoch %d after step %d; resume with --resume", epoch + 1, step)
                return None
        bar.close()
        with warnings.catch_warnings():  # resumed after an epoch's last step: no optimizer.step() yet
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
            state.scheduler.step()
        D.broadcast_buffers(unwrap(self.net), ctx)
        elapsed = time.perf_counter() - t0
        stats = D.all_reduce_mean({k: v / max(seen, 1) for k, v in sums.items()}, ctx)
        row = {"epoch": epoch + 1, "lr": state.optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 3),
               "triplets_per_s": seen * ctx.world_size / max(elapsed, 1e-9)}
        row.update({f"train_{k}": v for k, v in stats.items()})
        row.update({f"weight_{k}": w for k, w in state.criterion.weighting.effective_weights().items()})
        return row

    def validate(self, epoch: int, row: dict) -> dict:
        """Evaluate the ``eval.split`` when due (every ``eval.every`` epochs and after the last; rank 0):
        scores into ``row`` (``best`` set when the score improved); returns the metrics."""
        ecfg, epochs = self.config.eval, self.config.train.epochs
        due = (epoch + 1) % ecfg.every == 0 or epoch + 1 == epochs
        if not (due and self.ctx.is_main):
            return {}
        started, model = time.perf_counter(), unwrap(self.net)
        was_training = model.training
        embeddings = embed_split(
            model, self.spec, ecfg.split, input_size=self.config.data.input_size,
            crop_ratio=self.config.data.crop_ratio, batch_size=ecfg.batch_size, device=self.ctx.device,
            workers=self.config.train.workers, progress=self.progress, amp=self.amp,
        )
        model.train(was_training)
        result = evaluate_embeddings(embeddings, self.spec, ecfg.split, ks=ecfg.ks, margin=self.config.eval_margin)
        result.seconds = time.perf_counter() - started
        split = ecfg.split
        self.runlog.retrievals(self.spec, split, embeddings, self.global_step, epoch + 1)
        row[f"{split}_score"] = result.score
        per_attribute = result.asfr.per_attribute_map if result.asfr is not None else {}
        row.update({f"{split}_map_{k}": v for k, v in per_attribute.items()})
        if result.tr is not None:
            row[f"{split}_tr_loss"] = result.tr.average_loss
        self.runlog.scalars({f"{split}/score": result.score}
                            | {f"{split}/map_{k}": v for k, v in per_attribute.items()}, self.global_step)
        if result.score > self.state.best_score:
            self.state.best_score = result.score
            row["best"] = 1
        return result.to_dict()

    def save(self, path: Path, epoch: int, step: int, metrics: dict, with_state: bool = True) -> None:
        """A checkpoint (rank 0): the model and what eval/index need; with ``with_state`` also what resuming needs."""
        if not self.ctx.is_main:
            return
        state = self.state
        extra = {}
        if with_state:
            extra = dict(optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
                         loss_state=state.criterion.state_dict(), rng=rng_state(), step=step,
                         world_size=self.ctx.world_size)
        save_checkpoint(path, model=state.model, epoch=epoch, metrics=metrics, best_score=state.best_score,
                        history=state.history, input_size=self.config.data.input_size,
                        crop_ratio=self.config.data.crop_ratio, config=self.config.to_dict(),
                        **self.checkpoint_fields(), **extra)

    def checkpoint_fields(self) -> dict:
        """The model's name and attributes as a checkpoint records them (an extension run adds its lineage)."""
        return {"model_name": self.config.model.name, "attributes": self.spec.attributes}


# --------------------------------------------------------------------------- the run
def train(
    config: RunConfig,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    stop: Callable[[int, int], bool] | None = None,
    start_from: Path | None = None,
) -> TrainResult:
    """Train the model a config describes (see :mod:`agman.engine.config`).

    ``resume``: True (the run folder's ``last.pt``), a run folder or a checkpoint (:func:`find_resume`).
    ``overwrite``: allow a fresh run in a folder that already holds one.  ``stop(epoch, step)``:
    called after every optimizer step; returning True checkpoints and stops as an interrupt would
    (tests use it).  ``start_from``: a checkpoint of an earlier stage whose weights a fresh run starts
    from (the parts that model lacks keep their initialisation).  A config with ``train.stage2`` runs
    both stages (:func:`agman.engine.stages.train_stages`).
    """
    if config.train.stage2 is not None:
        return train_stages(config, train, resume=resume, overwrite=overwrite, stop=stop)
    ctx = D.init_distributed(config.train.device, config.train.ddp_backend)
    try:
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if advice := busy_cores_advice(torch.get_num_threads()):
            log.warning(advice)
        run_dir = config.run_dir
        resume_path = find_resume(resume, run_dir)
        if ctx.is_main and resume_path is None and (run_dir / LAST).exists() and not overwrite:
            raise AlreadyExistsError(f"{run_dir} already holds a run ({LAST}); resume it (--resume), "
                                     f"choose another output.dir, or overwrite it (--force)")
        progress = config.output.progress and ctx.is_main
        spec = open_training_data(config, ctx, progress)
        trunk = None
        if resume_path is None and config.warmup.epochs > 0:
            trunk = warm_up(config, spec, run_dir, ctx, progress)
        state = build_state(config, spec.n_attributes, ctx.device, trunk)
        if resume_path is not None:
            restore(state, resume_path, config, ctx)
        elif start_from is not None:
            start_from_stage(state.model, start_from)
        run = Run(config, ctx, spec, state, run_dir, progress, stop)
        finished = run.fit()
        run.runlog.close()
        best = run_dir / BEST
        return TrainResult(run_dir, run_dir / LAST, best if best.exists() else None, state.best_score, state.history,
                           not finished, state.model, state.criterion, trunk)
    finally:
        D.cleanup(ctx)
