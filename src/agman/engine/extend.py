"""Extension runs (`agman train --extend PARENT`): add attributes to a trained model, training only
what they need, and record the lineage that proves the old attributes unchanged.

The run reuses the training loop (:class:`agman.engine.train.Run`) on the dataset cut down to the new
attributes, with the model seen through :class:`agman.models.extension.NewAttributes`: the parent's
network is frozen and in eval mode (its BatchNorm statistics never move), only the new branches'
weights are in the optimizer, and the objective is the triplet loss alone (Eq. 7's classifier and
Eq. 9's weights belong to the parent's training and are not touched).  Checkpoints hold the whole
child (parent weights + branches) with ``extension`` (how to rebuild it) and ``lineage`` (the parent's
identity and every attribute's weight identity); an interrupted run resumes from ``last.pt`` like
any other.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from agman.data.spec import UNLABELED, DatasetError, DatasetSpec, Split
from agman.engine import distributed as D
from agman.engine.checkpoint import CheckpointError, load_checkpoint, load_model
from agman.engine.config import RunConfig
from agman.engine.step import build_criterion, build_optimizer
from agman.engine.train import (LAST, BEST, Run, TrainResult, TrainState, find_resume, open_training_data, restore,
                                seed_everything)
from agman.errors import AlreadyExistsError, InvalidValueError
from agman.models.extension import DESIGNS, ExtendedModel, NewAttributes, attribute_identities

log = logging.getLogger(__name__)


class MissingLabelsError(DatasetError, InvalidValueError):
    """The dataset does not label an attribute to add (a usage error: exit 2); the message names the file."""


def new_attributes(parent: list[str], spec: DatasetSpec, requested: list[str] | None = None) -> list[str]:
    """The attributes to add: ``requested``, or the dataset's attributes the parent lacks.  One the parent
    already has, or one the dataset lacks, is a usage error naming it."""
    if requested:
        for name in requested:
            if name in parent:
                raise InvalidValueError(f"attribute {name!r} is already in the parent model (it has "
                                        f"{', '.join(parent)}); extend with a new attribute")
            spec.attribute_index(name)
        return list(requested)
    names = [a for a in spec.attribute_names if a not in parent]
    if not names:
        raise InvalidValueError(f"dataset {spec.name!r} ({spec.source or spec.root}) has no attribute the parent "
                                f"lacks: {', '.join(spec.attribute_names)} are all in the parent model already")
    return names


def _labels_file(spec: DatasetSpec, split: str) -> str:
    """The file that holds ``split``'s labels, for messages (ASEN's label_<split>.txt, else the source)."""
    source = Path(spec.source) if spec.source else Path(spec.root)
    folder = source.parent if source.suffix else source
    candidate = folder / f"label_{split}.txt"
    return str(candidate if candidate.is_file() else source)


def restrict(spec: DatasetSpec, names: list[str]) -> DatasetSpec:
    """``spec`` with only the attributes ``names`` (labels, queries, candidates and triplet lists re-indexed).
    A training split without two labelled images of one of them is a :class:`DatasetError` naming its file."""
    index = [spec.attribute_index(n) for n in names]
    remap = {old: new for new, old in enumerate(index)}
    splits = {}
    for key, split in spec.splits.items():
        def keep(rows: np.ndarray) -> np.ndarray:
            rows = rows[np.isin(rows[:, 1], index)] if len(rows) else rows
            return np.stack([rows[:, 0], [remap[int(a)] for a in rows[:, 1]], rows[:, 2]], 1).astype(np.int64) \
                if len(rows) else np.zeros((0, 3), dtype=np.int64)
        triplets = None if split.triplets is None else {remap[a]: t for a, t in split.triplets.items() if a in remap}
        splits[key] = Split(split.name, split.paths, split.labels[:, index], keep(split.queries),
                            keep(split.candidates), triplets)
    train = splits.get("train")
    for j, name in enumerate(names):
        if train is not None and not (train.triplets and j in train.triplets) \
                and int((train.labels[:, j] != UNLABELED).sum()) < 2:
            raise MissingLabelsError(f"attribute {name!r} has no labels in the train split (it needs labelled "
                                     "images to learn from)", _labels_file(spec, "train"))
    return DatasetSpec(spec.name, spec.root, [spec.attributes[i] for i in index], splits, spec.source,
                       list(spec.warnings))


def lineage(parent_ckpt: dict, parent_path: str | Path, parent_ids: list[str], model: ExtendedModel,
            names: list[str]) -> dict:
    """What the child records: its parent (identity, file, attributes and their identities, computed on the
    parent), the parent's own ancestors, which design made each attribute, and each attribute's identity."""
    parent_names = [a["name"] for a in parent_ckpt["attributes"]]
    previous = parent_ckpt.get("lineage") or {}
    designs = dict(previous.get("designs") or {n: "trained" for n in parent_names})
    for branch, name in zip(list(model.branches)[-(len(names) - len(parent_names)):], names[len(parent_names):]):
        designs[name] = branch.design
    return {
        "parent": {"identity": parent_ckpt["identity"], "path": str(parent_path), "attributes": parent_names,
                   "attribute_identities": dict(zip(parent_names, parent_ids))},
        "ancestors": [*previous.get("ancestors", []), *([previous["parent"]] if previous.get("parent") else [])],
        "designs": designs,
        "attribute_identities": dict(zip(names, attribute_identities(model))),
    }


class ExtendRun(Run):
    """A :class:`Run` whose checkpoints hold the whole child, its ``extension`` layout and its ``lineage``."""

    def __init__(self, *args, parent_ckpt: dict, parent_path: Path, parent_ids: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.parent_ckpt, self.parent_path, self.parent_ids = parent_ckpt, parent_path, parent_ids

    def checkpoint_fields(self) -> dict:
        view: NewAttributes = self.state.model
        child = view.extended
        parent_attributes = [a for a in _attributes(self.parent_ckpt)]
        attributes = parent_attributes + list(self.spec.attributes)
        return {"model_name": self.parent_ckpt["model_name"], "attributes": attributes,
                "extension": child.extension_layout(),
                "lineage": lineage(self.parent_ckpt, self.parent_path, self.parent_ids, child,
                                   [a.name for a in attributes])}


def _attributes(ckpt: dict):
    from agman.data.spec import Attribute

    return [Attribute(a["name"], tuple(a["values"])) for a in ckpt["attributes"]]


def extend(config: RunConfig, parent: str | Path, *, design: str = "adapter", attributes: list[str] | None = None,
           resume: bool | str | Path = False, overwrite: bool = False, stop=None, unfreeze: bool = False
           ) -> TrainResult:
    """Train the attributes of ``config``'s dataset that ``parent`` lacks (or ``attributes``) on the frozen
    parent; see the module docstring.  ``resume``/``overwrite``/``stop`` as in :func:`agman.engine.train.train`.
    ``unfreeze`` trains the whole network instead (the naive fine-tune that forgets: a baseline for
    bench/extension.py, never what `agman train --extend` does)."""
    if design not in DESIGNS:
        raise InvalidValueError(f"--design must be one of {', '.join(DESIGNS)}, got {design!r}")
    if config.train.compile:
        raise InvalidValueError("an extension run cannot use train.compile (the frozen parent is swapped per call)")
    parent = Path(parent)
    parent_ckpt = load_checkpoint(parent)  # refuses a file whose weights fail their identity check
    if parent_ckpt["model_name"] != config.model.name:
        log.warning("the config names model %r; the extension keeps the parent's %r", config.model.name,
                    parent_ckpt["model_name"])
    ctx = D.init_distributed(config.train.device, config.train.ddp_backend)
    try:
        if ctx.enabled:
            raise InvalidValueError("an extension run trains a few rows on one process; run it without torchrun")
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        run_dir = config.run_dir
        resume_path = find_resume(resume, run_dir)
        if resume_path is None and (run_dir / LAST).exists() and not overwrite:
            raise AlreadyExistsError(f"{run_dir} already holds a run ({LAST}); resume it (--resume), "
                                     f"choose another output.dir, or overwrite it (--force)")
        progress = config.output.progress
        spec = open_training_data(config, ctx, progress)
        parent_names = [a["name"] for a in parent_ckpt["attributes"]]
        names = new_attributes(parent_names, spec, attributes)
        spec = restrict(spec, names)
        if resume_path is not None:
            saved = load_checkpoint(resume_path, verify=False)
            recorded = (saved.get("lineage") or {}).get("parent") or {}
            design = (saved.get("extension") or [{"design": design}])[-1]["design"]  # the run's own design
            if recorded.get("identity") != parent_ckpt["identity"]:
                raise CheckpointError(f"{resume_path} extends {recorded.get('identity')!r}, not {parent} "
                                      f"({parent_ckpt['identity']}): resume it with its own parent")
        model, _ = load_model(parent, ctx.device)
        parent_ids = attribute_identities(model)
        seed_everything(config.train.seed)
        child = ExtendedModel.grow(model, len(names), design,
                                   torch.Generator().manual_seed(int(config.train.seed))).to(ctx.device)
        if unfreeze:
            child.unfreeze()
        view = NewAttributes(child, len(names))
        criterion = build_criterion(replace(config.loss, classification=False), view).to(ctx.device)
        params = [p for p in child.parameters() if p.requires_grad] + list(criterion.parameters())
        optimizer = build_optimizer(config.train, params, ctx.device)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.train.lr_step,
                                                    gamma=config.train.lr_gamma)
        state = TrainState(view, criterion, optimizer, scheduler)
        if resume_path is not None:
            restore(state, resume_path, replace(config, model=replace(config.model, name=parent_ckpt["model_name"])),
                    ctx)
        log.info("extending %s (%s) by %s, design %r: %d trainable weights, the parent's %d frozen", parent,
                 ", ".join(parent_names), ", ".join(names), design,
                 sum(p.numel() for p in child.parameters() if p.requires_grad),
                 sum(p.numel() for p in child.base.parameters()))
        run = ExtendRun(config, ctx, spec, state, run_dir, progress, stop, parent_ckpt=parent_ckpt,
                        parent_path=parent, parent_ids=parent_ids)
        finished = run.fit()
        run.runlog.close()
        best = run_dir / BEST
        return TrainResult(run_dir, run_dir / LAST, best if best.exists() else None, state.best_score, state.history,
                           not finished, child, criterion)
    finally:
        D.cleanup(ctx)
