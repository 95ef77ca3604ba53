"""What a run shows: the config in TensorBoard's HPARAMS tab, sample retrievals of validation queries
per epoch (TensorBoard image + retrievals.png), curves over integer epochs with legends clear of the
lines."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import make_asen
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_engine_train import tiny_config

from agman.data.layouts import open_dataset
from agman.engine import report
from agman.engine.config import with_overrides
from agman.engine.runlog import SAMPLE_TILE, SAMPLE_TOP_K, RunLog, flatten, sample_queries
from agman.engine.train import train


def events(folder) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def hparams_of(acc: EventAccumulator):
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    return start.session_start_info.hparams, [m.name.tag for m in experiment.experiment.metric_infos]


def test_flatten_gives_dotted_keys_and_tensorboard_types():
    flat = flatten({"train": {"lr": 1e-3, "amp": None, "ks": [1, 5]},
                    "model": {"name": "agman", "options": {"ca": True}}})
    assert flat == {"train.lr": 1e-3, "train.amp": "None", "train.ks": "[1, 5]", "model.name": "agman",
                    "model.options.ca": True}


def test_a_run_records_its_config_and_draws_sample_retrievals_every_epoch(asen_root, tmp_path):
    cfg = with_overrides(tiny_config(asen_root, tmp_path / "run", epochs=2), ["output.tensorboard=true"])
    result = train(cfg)
    acc = events(result.run_dir / "tensorboard")
    hp, metrics = hparams_of(acc)
    assert hp["train.lr"].number_value == pytest.approx(1e-3) and hp["model.name"].string_value == "agman"
    assert hp["data.input_size"].number_value == 32 and hp["train.epochs"].number_value == 2
    assert len(hp) == len(flatten(cfg.to_dict()))
    assert metrics == ["valid/score", "valid/map_attr0", "valid/map_attr1"]
    assert {"valid/score", "valid/map_attr0"} <= set(acc.Tags()["scalars"])  # the metrics' values are logged
    images = acc.Images("valid/retrievals")
    assert len(images) == 2  # one per epoch (validation every epoch here)
    with Image.open(result.run_dir / "retrievals.png") as sheet:
        assert (images[-1].width, images[-1].height) == sheet.size
    # a resumed run goes on drawing into the same run
    train(with_overrides(cfg, ["train.epochs=3"]), resume=True)
    acc = events(result.run_dir / "tensorboard")
    assert len(acc.Images("valid/retrievals")) == 3


def test_sample_retrievals_are_the_evaluation_ranking_framed_by_value(tmp_path):
    spec = open_dataset(make_asen(tmp_path / "ds", n_per_split=(12, 10, 20), values=(3, 2)))
    split = spec.split("valid")
    # embeddings that rank every same-value image first: one-hot of the image's value per attribute
    emb = np.zeros((len(split), 2, 3), np.float32)
    for i in range(len(split)):
        for a in range(2):
            emb[i, a, split.labels[i, a]] = 1.0
    log = RunLog(tmp_path / "run", enabled=True, tensorboard=False)
    (tmp_path / "run").mkdir()
    log.retrievals(spec, "valid", emb, step=5, epoch=1)
    queries = sample_queries(split, 2)
    assert [int(split.queries[q, 1]) for q in queries] == [0, 1]
    with Image.open(tmp_path / "run" / "retrievals.png") as im:
        sheet = np.asarray(im.convert("RGB"))
    for r, q in enumerate(queries):
        a, value = int(split.queries[q, 1]), int(split.queries[q, 2])
        c_rows = np.flatnonzero(split.candidates[:, 1] == a)
        same = int((split.candidates[c_rows, 2] == value).sum())
        expected = [report.SHEET_BLUE] + [report.SHEET_GREEN] * min(same, SAMPLE_TOP_K)
        expected += [report.SHEET_RED] * (SAMPLE_TOP_K - min(same, SAMPLE_TOP_K))
        y = 14 + 4 + r * (14 + SAMPLE_TILE + 4) + 14 + 1  # title, then row r's caption; 1 px into the frame
        for c, colour in enumerate(expected):
            x = 4 + c * (SAMPLE_TILE + 4) + (4 if c else 0) + SAMPLE_TILE // 2
            assert tuple(sheet[y, x]) == colour, (r, c)


def test_curves_have_integer_epochs_and_legends_outside_the_plots():
    history = [{"epoch": e, "lr": 1e-3 * 0.9 ** e, "train_total": 1 / e, "train_triplet": 0.5 / e,
                "weight_triplet": 0.5, "valid_score": 0.3 + 0.1 * e, "valid_map_skirt": 0.2 * e} for e in (1, 2, 3)]
    fig = report.training_curves_figure(history)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes[:3]:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend = ax.get_legend()
        assert legend is not None
        box, plot = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.y1 < plot.y0  # entirely below the plotting area: it covers no line
    import matplotlib.pyplot as plt

    plt.close(fig)
