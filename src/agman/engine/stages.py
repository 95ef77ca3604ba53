"""ASEN++'s two-stage schedule (``train.stage2``): stage 1 trains the global branch alone, stage 2 the
whole network from stage 1's last checkpoint (the authors' README: ``main.py --cfg ... s2.yaml --resume
runs/<Dataset>_s1/checkpoint.pth.tar``).

Stage 1 runs in ``<run>/s1/`` with ``model.local=false``; stage 2 in ``<run>/`` itself (so ``best.pt``
and ``last.pt`` of the run are the whole model's) with the ``train.stage2`` settings: its own epochs and
StepLR, ``lr`` for the local branch and ``slow_lr`` for the global one, the triplet loss on the global
branch weighted ``global_weight`` plus ``local_weight`` x the local branch's and ``align_weight`` x the
alignment (:class:`agman.engine.losses.TripletCriterion`).  ``--resume`` picks the stage from the files:
``<run>/last.pt`` resumes stage 2, else ``<run>/s1/last.pt`` resumes (or, finished, closes) stage 1
and then starts stage 2.  ``<run>/stages.yaml`` keeps the two-stage config, so ``agman train --resume
<run>`` without ``--config`` resumes a run still in stage 1 too.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agman.engine.checkpoint import LAST
from agman.engine.config import RunConfig, from_dict, save_config
from agman.errors import NotFoundError

log = logging.getLogger(__name__)

STAGE1_DIR = "s1"
#: The whole two-stage config, in the run folder (stage 1's own config.yaml lies in ``s1/``).
STAGES_CONFIG = "stages.yaml"


def stage_configs(config: RunConfig) -> tuple[RunConfig, RunConfig]:
    """The two runs a ``train.stage2`` config stands for: ``(stage 1, stage 2)``."""
    s2, run_dir = config.train.stage2, config.run_dir
    base = config.to_dict()
    base["train"]["stage2"] = None
    first = copy.deepcopy(base)
    first["model"]["local"] = False
    first["output"]["dir"] = str(run_dir / STAGE1_DIR)
    second = copy.deepcopy(base)
    second["model"]["local"] = True
    second["output"]["dir"] = str(run_dir)
    second["warmup"]["dir"] = base["warmup"]["dir"] or first["output"]["dir"]  # the same trunk file, not a new one
    second["train"].update(epochs=s2.epochs, lr=s2.lr, slow_lr=s2.slow_lr, lr_step=s2.lr_step, lr_gamma=s2.lr_gamma)
    second["loss"].update(weighting="fixed", weights={"triplet": s2.global_weight}, local_weight=s2.local_weight,
                          align_weight=s2.align_weight)
    source = config.config_path or "<config>"
    return from_dict(first, source=f"{source} (stage 1)"), from_dict(second, source=f"{source} (stage 2)")


def train_stages(config: RunConfig, train: Callable[..., Any], *, resume: bool | str | Path = False,
                 overwrite: bool = False, stop: Callable[[int, int], bool] | None = None):
    """Both stages of ``config`` (resuming in the stage the run folder is in), each run by ``train``
    (:func:`agman.engine.train.train`, which hands a two-stage config here); the stage-2 ``TrainResult``,
    or stage 1's when it was stopped."""
    first, second = stage_configs(config)
    stage1_last = first.run_dir / LAST
    if resume:
        folder = config.run_dir if resume is True else Path(resume)
        folder = folder.parent if folder.is_file() else folder  # last.pt of either stage names the run too
        folder = folder.parent if folder.name == STAGE1_DIR else folder
        if folder.resolve() != config.run_dir.resolve():
            raise NotFoundError(f"a two-stage run resumes from its run folder {config.run_dir}, not {resume}")
        if (config.run_dir / LAST).is_file():
            log.info("resuming stage 2 of %s", config.run_dir)
            return train(second, resume=True, stop=stop)
        if not stage1_last.is_file():
            raise NotFoundError(f"nothing to resume: neither {config.run_dir / LAST} nor {stage1_last} exists")
        log.info("resuming stage 1 of %s", config.run_dir)
        result = train(first, resume=True, stop=stop)
    else:
        config.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, config.run_dir / STAGES_CONFIG)  # what `agman train --resume RUN` reruns in stage 1
        result = train(first, overwrite=overwrite, stop=stop)
    if result.interrupted:
        return result
    log.info("stage 1 done; stage 2 starts from %s", stage1_last)
    return train(second, overwrite=overwrite, stop=stop, start_from=stage1_last)
