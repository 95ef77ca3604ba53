"""Training (§2.4, §3.1): fresh triplets every epoch, Eq. 7–9 losses, validation MAP model
selection, atomic best/last checkpoints, exact resume, DDP, and logs you can watch.

Determinism (what makes ``--resume`` end with the weights of an uninterrupted run on CPU):

* epoch ``e``'s triplets are ``sampler.epoch(e)`` — a function of (seed, e) — in that order
  (their order is already random; under DDP rank ``r`` takes rows ``r, r+W, ...``);
* the random augmentation of triplet row ``i`` of epoch ``e`` runs under a torch seed made of
  (seed, e, i), so it does not depend on worker processes, prefetching or where a run resumed;
* batches cover rows ``[k*B, (k+1)*B)``; a run interrupted after step ``k`` resumes at ``k``;
* the checkpoint holds model, optimizer, scheduler, loss weights, RNG states (torch, CUDA,
  numpy, python), the epoch, the step within it, the best score and the history.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from agman.data.images import TripletImageDataset
from agman.data.spec import DatasetSpec
from agman.data.transforms import build_transform
from agman.data.triplets import make_sampler
from agman.engine import distributed as D
from agman.engine.checkpoint import load_checkpoint, save_checkpoint, unwrap
from agman.engine.config import default_run_dir, model_options, plain, save_config
from agman.engine.evaluate import evaluate_model, open_data
from agman.engine.losses import TripletCriterion
from agman.errors import AlreadyExistsError, InvalidValueError, NotFoundError
from agman.models.output import ModelOutput

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


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


# --------------------------------------------------------------------------- RNG states
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global RNG's state as plain types and tensors (loads with ``weights_only``)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def item_seed(seed: int, epoch: int, row: int) -> int:
    """The torch seed for the augmentation of triplet row ``row`` of ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(2, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------- data
class EpochTriplets(Dataset):
    """Triplet images addressed by ``(epoch, position)``: the rows of an epoch are computed (and
    cached) inside whichever process loads them, so persistent workers follow the epochs."""

    def __init__(self, sampler, paths: list[str], root, transform, seed: int, rank: int = 0, world_size: int = 1):
        self.sampler = sampler
        self.images = TripletImageDataset(paths, root, transform)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._epoch: int | None = None

    def rows(self, epoch: int) -> np.ndarray:
        if self._epoch != epoch:
            self.images.set_triplets(D.shard(self.sampler.epoch(epoch), self.rank, self.world_size))
            self._epoch = epoch
        return self.images.triplets

    def __len__(self) -> int:
        return len(self.sampler) // self.world_size if self.world_size > 1 else len(self.sampler)

    def __getitem__(self, key: tuple[int, int]):
        epoch, position = key
        self.rows(epoch)
        global_row = self.rank + position * self.world_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, global_row))
            return self.images[position]


class EpochBatches(Sampler):
    """Batches of ``(epoch, position)`` keys: steps ``start_step ..`` of the current epoch."""

    def __init__(self, n_rows: int, batch_size: int, max_steps: int = 0):
        self.n_rows, self.batch_size = n_rows, batch_size
        steps = math.ceil(n_rows / batch_size)
        self.steps = min(steps, max_steps) if max_steps else steps
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            lo = step * self.batch_size
            yield [(self.epoch, i) for i in range(lo, min(lo + self.batch_size, self.n_rows))]


# --------------------------------------------------------------------------- stopping
class StopFlag:
    """Set by SIGINT/SIGTERM (first signal: finish the step, checkpoint, stop; second: abort)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step, writing the checkpoint (signal again to abort)")

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- logging helpers
class RunLog:
    """Per-epoch CSV log, TensorBoard scalars and the curve picture (main process only)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.run_dir, self.enabled = run_dir, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; no TensorBoard logs")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.writer.add_scalar(k, v, step)

    def epoch(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        from agman.engine.report import plot_training_curves

        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys and not isinstance(row[k], dict)]
        with open(self.run_dir / "log.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(history)
        try:
            plot_training_curves(history, self.run_dir / "curves.png")
        except Exception as exc:  # noqa: BLE001 - a picture must never stop training
            log.warning("could not draw curves.png: %s", exc)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- the run
def _switch(value, device: torch.device) -> bool:
    return device.type == "cuda" if value == "auto" else bool(value)


def _amp(tcfg: dict, device: torch.device) -> bool:
    """``train.amp``: bf16 autocast when asked, or by default (``auto``) on GPU."""
    return tcfg["amp"] == "bf16" or (tcfg["amp"] == "auto" and device.type == "cuda")


BN_PASSES = ("separate", "joint")


class TrainStep:
    """One optimisation step on a batch of triplets: the three images through the model (bf16
    autocast where asked), the loss, backward, gradient averaging of the loss weights under DDP,
    optional clipping, the optimizer step.

    ``bn_passes``: ``separate`` runs anchors, negatives ("far") and positives ("close") as three
    passes of B, in that order, as the released Tripletnet does (BatchNorm normalises each set with
    its own statistics and updates its running statistics three times); ``joint`` runs them as one
    pass of 3B (one set of statistics, one update)."""

    def __init__(self, net: torch.nn.Module, criterion: TripletCriterion, optimizer: torch.optim.Optimizer,
                 device: torch.device, *, channels_last: bool = False, amp: bool = False, grad_clip: float = 0.0,
                 ctx: D.DistributedContext | None = None, bn_passes: str = "separate"):
        if bn_passes not in BN_PASSES:
            raise InvalidValueError(f"bn_passes must be one of {', '.join(BN_PASSES)}, got {bn_passes!r}")
        self.net, self.criterion, self.optimizer, self.device = net, criterion, optimizer, device
        self.channels_last, self.amp, self.grad_clip, self.bn_passes = channels_last, amp, grad_clip, bn_passes
        self.ctx = ctx or D.DistributedContext(device=device)
        self.params = [p for group in optimizer.param_groups for p in group["params"]]

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def __call__(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, attrs: torch.Tensor):
        attrs = attrs.to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext():
            if self.bn_passes == "joint":
                output = self.net(self._images(torch.cat([anchor, positive, negative])), attrs.repeat(3))
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


def build_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def build_criterion(config: dict, model: torch.nn.Module) -> TripletCriterion:
    """Eq. 7 is used where the config asks for it and the model has the classification branch."""
    loss = config["loss"]
    has_branch = bool(getattr(model, "config", {}).get("classification", False))
    if loss["classification"] and not has_branch:
        log.info("model %s has no classification branch: training with the triplet loss only", config["model"]["name"])
    return TripletCriterion(
        margin=loss["margin"], classification=bool(loss["classification"]) and has_branch,
        weighting=loss["weighting"], init=loss["weight_init"], weights=loss["weights"],
        mask_l1=loss["mask_l1"], embed_l2=loss["embed_l2"],
    )


def build_from_config(config: dict, n_attributes: int, **extra) -> torch.nn.Module:
    """The config's model; ``extra`` replaces model options (the warm-up trunk as ``pretrained``)."""
    from agman.models.registry import build_model

    name, options = model_options(config)
    return build_model(name, n_attributes, **{**options, **extra})


def warm_up(config: dict, spec: DatasetSpec, run_dir: Path, ctx: D.DistributedContext, progress: bool) -> Path:
    """The ``warmup`` section: value-classification pre-training of the configured backbone on the
    train split (:mod:`agman.engine.pretrain`), run by rank 0 and reused from the run folder when a
    trunk with the same settings is there; returns the trunk file for ``pretrained``."""
    from agman.engine.pretrain import pretrain_backbone
    from agman.models.registry import option

    name, options = model_options(config)
    if str(options.get("pretrained", "none")).lower() not in ("none", ""):
        raise InvalidValueError(f"warmup.epochs={config['warmup']['epochs']} replaces model.pretrained="
                         f"{options['pretrained']!r}: set one of them")
    wcfg, tcfg, dcfg = config["warmup"], config["train"], config["data"]
    settings = dict(backbone=option(name, options, "backbone"), input_size=int(dcfg["input_size"]),
                    crop_ratio=float(dcfg["crop_ratio"]), epochs=int(wcfg["epochs"]),
                    batch_size=int(wcfg["batch_size"]), lr=float(wcfg["lr"]), seed=int(tcfg["seed"]))
    key = hashlib.sha256(json.dumps([str(spec.root), spec.name, settings], sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(wcfg["dir"]) if wcfg["dir"] else run_dir
    path = folder / f"warmup-{settings['backbone']}-{key}.pth"
    if ctx.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        result = pretrain_backbone(spec, path, **settings, workers=int(tcfg["workers"]), device=ctx.device,
                                   amp=_amp(tcfg, ctx.device),
                                   channels_last=_switch(tcfg["channels_last"], ctx.device), progress=progress)
        if result.epochs:
            log.info("backbone warm-up: %d epochs in %.0f s, value cross-entropy %.4f -> %s",
                     result.epochs, result.seconds, result.final_loss, path)
    D.barrier(ctx)
    return path


def _find_resume(resume, run_dir: Path) -> Path | None:
    if not resume:
        return None
    path = run_dir / LAST if resume is True else Path(resume)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise NotFoundError(f"nothing to resume: {path} not found")
    return path


def train(
    config: dict,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    stop: Callable[[int, int], bool] | None = None,
) -> TrainResult:
    """Train the model a resolved config describes (see :mod:`agman.engine.config`).

    ``resume``: True (the run folder's ``last.pt``) or a checkpoint path.  ``overwrite``: allow a
    fresh run in a folder that already holds one.  ``stop(epoch, step)``: called after every
    optimizer step; returning True checkpoints and stops as an interrupt would (tests use it).
    """
    tcfg, ecfg, ocfg, dcfg = config["train"], config["eval"], config["output"], config["data"]
    ctx = D.init_distributed(tcfg["device"], tcfg["ddp_backend"])
    try:
        return _train(config, ctx, resume, overwrite, stop, tcfg, ecfg, ocfg, dcfg)
    finally:
        D.cleanup(ctx)


def _train(config, ctx, resume, overwrite, stop, tcfg, ecfg, ocfg, dcfg) -> TrainResult:
    device = ctx.device
    if tcfg["threads"]:
        torch.set_num_threads(int(tcfg["threads"]))
    run_dir = default_run_dir(config)
    resume_path = _find_resume(resume, run_dir)
    if ctx.is_main and resume_path is None and (run_dir / LAST).exists() and not overwrite:
        raise AlreadyExistsError(f"{run_dir} already holds a run ({LAST}); resume it (--resume), "
                              f"choose another output.dir, or overwrite it (--force)")
    progress = bool(ocfg["progress"]) and ctx.is_main

    # Data (rank 0 generates the synthetic set, if any, before the others open it).
    spec: DatasetSpec | None = open_data(dcfg, progress=progress) if ctx.is_main else None
    D.barrier(ctx)
    if spec is None:
        spec = open_data(dcfg)
    train_split = spec.split("train")
    spec.split(ecfg["split"])  # fail now, not after the first epoch
    seed = int(tcfg["seed"])
    sampler = make_sampler(train_split, int(tcfg["triplets_per_epoch"]), seed, tcfg["sampling"])

    # Model (on the warm-up trunk for a fresh run that asks for one), loss, optimisation.
    extra = {}
    if resume_path is None and int(config["warmup"]["epochs"]) > 0:
        extra["pretrained"] = str(warm_up(config, spec, run_dir, ctx, progress))
    seed_everything(seed)
    model = build_from_config(config, spec.n_attributes, **extra)
    criterion = build_criterion(config, model)
    channels_last = _switch(tcfg["channels_last"], device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    criterion.to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(criterion.parameters())
    optimizer = build_optimizer(tcfg["optimizer"], params, tcfg["lr"], tcfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(tcfg["lr_step"]), gamma=tcfg["lr_gamma"])

    start_epoch, start_step, best_score, history = 0, 0, -math.inf, []
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path, map_location="cpu")
        if ckpt["model_name"] != config["model"]["name"]:
            raise InvalidValueError(f"{resume_path} holds a {ckpt['model_name']!r} model; "
                                    f"the config trains {config['model']['name']!r}")
        if "optimizer" not in ckpt:
            raise InvalidValueError(f"{resume_path} has no training state to resume from (is it a best.pt?)")
        model.load_state_dict(ckpt["state_dict"])
        criterion.load_state_dict(ckpt["loss_state"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, start_step = int(ckpt["epoch"]), int(ckpt.get("step", 0))
        best_score = float(ckpt.get("best_score", -math.inf))
        history = list(ckpt.get("history", []))
        if int(ckpt.get("world_size", 1)) != ctx.world_size:
            log.warning("resuming a %d-process run with %d processes: the triplet shards differ",
                        int(ckpt.get("world_size", 1)), ctx.world_size)
        log.info("resuming %s at epoch %d, step %d", resume_path, start_epoch + 1, start_step)

    net: torch.nn.Module = model
    if ctx.enabled:
        if tcfg["sync_bn"]:
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(tcfg["find_unused_parameters"]),
        )
    if tcfg["compile"]:
        net = torch.compile(net)

    # Loader.
    input_size, crop_ratio = int(dcfg["input_size"]), float(dcfg["crop_ratio"])
    dataset = EpochTriplets(sampler, train_split.paths, spec.root, build_transform(input_size, True, crop_ratio),
                            seed, ctx.rank, ctx.world_size)
    batches = EpochBatches(len(dataset), int(tcfg["batch_size"]), int(tcfg["max_steps_per_epoch"]))
    workers = int(tcfg["workers"])
    loader = DataLoader(
        dataset, batch_sampler=batches, num_workers=workers,
        pin_memory=_switch(tcfg["pin_memory"], device),
        persistent_workers=bool(tcfg["persistent_workers"]) and workers > 0,
        prefetch_factor=int(tcfg["prefetch_factor"]) if workers > 0 else None,
    )
    amp = _amp(tcfg, device)
    if amp and device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("train.amp=bf16 on a CPU without native bf16 instructions is slow; train.amp=none is faster here")
    step_fn = TrainStep(net, criterion, optimizer, device, channels_last=channels_last, amp=amp,
                        grad_clip=float(tcfg["grad_clip"]), ctx=ctx, bn_passes=tcfg["bn_passes"])

    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(plain(config), run_dir / "config.yaml")
    runlog = RunLog(run_dir, ctx.is_main, bool(ocfg["tensorboard"]))
    if history:
        runlog.epoch(history)
    epochs, batch = int(tcfg["epochs"]), int(tcfg["batch_size"])
    common = dict(model_name=config["model"]["name"], attributes=spec.attributes, input_size=input_size,
                  crop_ratio=crop_ratio, config=plain(config))

    def save(path: Path, epoch: int, step: int, metrics: dict, with_state: bool = True) -> None:
        if not ctx.is_main:
            return
        state = {}
        if with_state:
            state = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         loss_state=criterion.state_dict(), rng=rng_state(), step=step, world_size=ctx.world_size)
        save_checkpoint(path, model=model, epoch=epoch, metrics=metrics, best_score=best_score,
                        history=history, **common, **state)

    log.info("training %s on %s (%d train images, %d triplets/epoch, batch %d x %d process(es)) on %s%s -> %s",
             config["model"]["name"], spec.name, len(train_split), len(sampler), batch, ctx.world_size, device,
             " (bf16)" if amp else "", run_dir)
    global_step = start_epoch * batches.steps + start_step
    interrupted = False
    with StopFlag() as flag:
        for epoch in range(start_epoch, epochs):
            step0 = start_step if epoch == start_epoch else 0
            batches.set_epoch(epoch, step0)
            net.train()
            sums: dict[str, float] = {}
            seen, t0 = 0, time.perf_counter()
            bar = tqdm(total=batches.steps * batch, initial=step0 * batch, unit="triplet", unit_scale=True,
                       desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False, dynamic_ncols=True)
            step = step0
            for anchor, positive, negative, attrs in loader:
                loss = step_fn(anchor, positive, negative, attrs)
                step += 1
                global_step += 1
                n = len(attrs)
                seen += n
                for k, v in loss.parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                bar.update(n)
                bar.set_postfix(loss=f"{float(loss.total.detach()):.4f}", refresh=False)
                if global_step % int(ocfg["log_every"]) == 0:
                    runlog.scalars({f"train/{k}": float(v.detach()) for k, v in loss.parts.items()}
                                   | {"train/lr": optimizer.param_groups[0]["lr"]}
                                   | {f"weights/{k}": w for k, w in criterion.weighting.effective_weights().items()},
                                   global_step)
                want_stop = D.broadcast_flag(flag.requested or bool(stop and stop(epoch, step)), ctx)
                every = int(tcfg["checkpoint_every_steps"])
                if want_stop or (every and step % every == 0 and step < batches.steps):
                    D.broadcast_buffers(unwrap(net), ctx)
                    save(run_dir / LAST, epoch, step, {})
                if want_stop:
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                log.info("stopped in epoch %d after step %d; resume with --resume", epoch + 1, step)
                break
            with warnings.catch_warnings():  # resumed after an epoch's last step: no optimizer.step() yet
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                scheduler.step()
            D.broadcast_buffers(unwrap(net), ctx)
            elapsed = time.perf_counter() - t0
            stats = D.all_reduce_mean({k: v / max(seen, 1) for k, v in sums.items()}, ctx)
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 3),
                   "triplets_per_s": seen * ctx.world_size / max(elapsed, 1e-9)}
            row.update({f"train_{k}": v for k, v in stats.items()})
            row.update({f"weight_{k}": w for k, w in criterion.weighting.effective_weights().items()})
            metrics: dict = {}
            validate = (epoch + 1) % int(ecfg["every"]) == 0 or epoch + 1 == epochs
            if validate and ctx.is_main:
                result = evaluate_model(
                    unwrap(net), spec, ecfg["split"], input_size=input_size, crop_ratio=crop_ratio,
                    batch_size=int(ecfg["batch_size"]), device=device, workers=workers, progress=progress, amp=amp,
                    ks=ecfg["ks"], margin=float(ecfg["margin"] or config["loss"]["margin"]),
                )
                metrics = result.to_dict()
                row[f"{ecfg['split']}_score"] = result.score
                if result.asfr is not None:
                    row.update({f"{ecfg['split']}_map_{k}": v for k, v in result.asfr.per_attribute_map.items()})
                if result.tr is not None:
                    row[f"{ecfg['split']}_tr_loss"] = result.tr.average_loss
                runlog.scalars({f"{ecfg['split']}/score": result.score}
                               | {f"{ecfg['split']}/map_{k}": v for k, v in (result.asfr.per_attribute_map.items()
                                                                               if result.asfr else [])},
                               global_step)
                if result.score > best_score:
                    best_score = result.score
                    row["best"] = 1
            history.append(row)
            if row.get("best"):
                save(run_dir / BEST, epoch + 1, 0, metrics, with_state=False)
            save(run_dir / LAST, epoch + 1, 0, metrics)
            runlog.epoch(history)
            log.info("epoch %d/%d: %s", epoch + 1, epochs, _epoch_line(row, ecfg["split"], best_score))
            D.barrier(ctx)
    runlog.close()
    best = run_dir / BEST
    return TrainResult(run_dir, run_dir / LAST, best if best.exists() else None, best_score, history, interrupted,
                       model, criterion, Path(extra["pretrained"]) if extra else None)


def _epoch_line(row: dict, split: str, best: float) -> str:
    parts = [f"loss {row.get('train_total', float('nan')):.4f}"]
    terms = [f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train_") and k != "train_total"]
    if terms:
        parts[0] += f" ({', '.join(terms)})"
    weights = [f"{k[7:]} {v:.3g}" for k, v in row.items() if k.startswith("weight_")]
    if weights:
        parts.append("weights " + ", ".join(weights))
    parts.append(f"lr {row['lr']:.3g}")
    if f"{split}_score" in row:
        parts.append(f"{split} score {row[f'{split}_score']:.4f} (best {best:.4f})")
    parts.append(f"{row['triplets_per_s']:.1f} triplets/s, {row['seconds']:.0f} s")
    return "; ".join(parts)
