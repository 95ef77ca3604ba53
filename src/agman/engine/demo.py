"""`agman demo`: the whole system on the synthetic set — data, training, evaluation, pictures, report.

:func:`run_demo` runs the named steps in order: :func:`open_demo_data`, training
(:func:`agman.engine.train.train`), :func:`evaluate_rows` (trained AG-MAN, the same network
untrained and on the warm-up trunk only, the warm-up's value classifier used as a retriever, a
colour-histogram ranking, the expected random ranking),
:func:`draw_pictures` and :func:`write_report`.  The report folder (``agman-demo/`` by default)
receives ``report.md``, ``metrics.{md,csv}``, ``curves.png``, ``grids/<attribute>.png`` (top-10 of
one test query, correct results framed green, wrong ones red, like Fig. 5) and
``attention/<attribute>.png`` (ASA attention over test images, like Fig. 7, drawn on the original
image with the attribute's region boxed where the data has a regions file); the run itself
(checkpoints, logs) is in ``<out>/run``.  Every file is written atomically.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agman.data.spec import DatasetSpec
from agman.engine.config import RunConfig, load_config
from agman.engine.rng import seed_everything
from agman.engine.train import TrainResult, train
from agman.fileio import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

SPLIT = "test"
TOP_K = 10
ATTENTION_IMAGES = 6
ATTENTION_TILE = 160  # pixels per attention picture (the original scaled to it, the map drawn where the model saw)
TRAINED = "AG-MAN (trained)"
UNTRAINED = "AG-MAN (untrained, random init)"
WARM_ONLY = "AG-MAN (warm-up trunk, untrained heads)"
CLASSIFIER = "warm-up value classifier (value probabilities)"
HISTOGRAM = "colour histogram"
RANDOM = "random ranking (expected)"


@dataclass
class DemoResult:
    out: Path
    run_dir: Path
    interrupted: bool = False
    rows: dict[str, dict] = field(default_factory=dict)  # label -> metrics (EvalResult.to_dict)
    table: str = ""  # the metrics tables as terminal text
    verdict: str = ""
    where: str = ""  # what the attention scores say (empty when the data has no regions file)
    versus: str = ""  # what the classifier row is, and where AG-MAN wins and loses against it
    seconds: dict[str, float] = field(default_factory=dict)  # data, training, total


def demo_config(reference: str | Path, out: str | Path, overrides=(), *, data: str | None = None,
                progress: bool = True) -> RunConfig:
    """The demo's config: ``reference`` with ``overrides``, the run in ``<out>/run``, the data in ``data``."""
    items = [*overrides, f"output.dir={(Path(out) / 'run').as_posix()}"]
    if data:
        items.append(f"data.root={data}")
    if not progress:
        items.append("output.progress=false")
    return load_config(reference, items)


def run_demo(config: RunConfig, out: str | Path, announce: Callable[[str], None] = log.info) -> DemoResult:
    """Every step of the demo; ``announce`` receives one line as each step starts."""
    start, out = time.perf_counter(), Path(out)
    announce(f"[1/4] synthetic set at {config.data.root} (rendered if absent)")
    spec = open_demo_data(config)
    seconds = {"data": time.perf_counter() - start}
    warmup = config.warmup.epochs
    announce(f"[2/4] training {config.model.name} ("
             + (f"backbone warm-up {warmup} epochs, then " if warmup else "")
             + f"{config.train.epochs} epochs x {config.train.triplets_per_epoch} triplets) -> {config.run_dir}")
    result = train(config, overwrite=True)
    seconds["training"] = time.perf_counter() - start - seconds["data"]
    if result.interrupted:
        return DemoResult(out, result.run_dir, interrupted=True, seconds=seconds)

    announce("[3/4] evaluating on the test split: trained, untrained, warm-up classifier, colour histogram, random")
    from agman.engine.checkpoint import load_model
    from agman.engine.report import write_report_tables

    model, info = load_model(result.best_path or result.last_path)
    trained_embeddings, rows = evaluate_rows(config, spec, result, model, info)
    table = write_report_tables(out, "metrics", rows, spec.attribute_names,
                                title=f"agman demo: {spec.name}, {SPLIT} split ({rows[TRAINED]['images']} images)")
    curves = result.run_dir / "curves.png"
    if curves.is_file():
        atomic_write(out / "curves.png", lambda f: f.write(curves.read_bytes()))

    announce("[4/4] drawing top-10 grids and attention heatmaps")
    pictures = draw_pictures(model, info, spec, out, trained_embeddings)
    seconds["total"] = time.perf_counter() - start
    where, where_table = localization_section(rows)
    verdict = write_report(out, config, rows, spec.attribute_names, pictures, seconds, (where, where_table))
    return DemoResult(out, result.run_dir, False, rows, table, verdict, where,
                      against_classifier(rows, spec.attribute_names), seconds)


def open_demo_data(config: RunConfig) -> DatasetSpec:
    """The synthetic set (rendered when ``data.root`` is absent or empty; never overwritten)."""
    return config.data.open(progress=config.output.progress)


def evaluate_rows(config: RunConfig, spec: DatasetSpec, result: TrainResult, model, info) -> tuple[np.ndarray, dict]:
    """The trained model's test embeddings and one metrics row per compared method."""
    from agman.engine.evaluate import colour_histogram_embeddings, embed_split, evaluate_embeddings, evaluate_model
    from agman.engine.localization import localization_if_boxed
    from agman.engine.pretrain import load_value_classifier
    from agman.models.registry import trunk_arch

    view = dict(input_size=info.input_size, crop_ratio=info.crop_ratio, batch_size=config.eval.batch_size)
    trained_embeddings = embed_split(model, spec, SPLIT, **view)
    trained = evaluate_embeddings(trained_embeddings, spec, SPLIT)
    trained.localization = localization_if_boxed(model, spec, SPLIT, **view, model_name=TRAINED)
    rows = {TRAINED: trained.to_dict()}
    for label, extra in ((UNTRAINED, {}), (WARM_ONLY, {"pretrained": str(result.warmup_trunk)})):
        if label == WARM_ONLY and result.warmup_trunk is None:
            continue
        seed_everything(config.train.seed)
        untrained = config.model.build(spec.n_attributes, **extra).eval()
        evaluation = evaluate_model(untrained, spec, SPLIT, **view)
        evaluation.localization = localization_if_boxed(untrained, spec, SPLIT, **view, model_name=label)
        rows[label] = evaluation.to_dict()
    if result.warmup_trunk is not None:
        arch = trunk_arch(config.model.name, config.model.options)
        classifier = load_value_classifier(result.warmup_trunk, arch, spec.value_counts)
        if classifier is None:
            log.warning("%s has no value heads beside it (an older warm-up): no classifier row", result.warmup_trunk)
        else:  # the strongest simple baseline: rank by the probability of the same predicted value
            rows[CLASSIFIER] = evaluate_model(classifier, spec, SPLIT, **view).to_dict()
    rows[HISTOGRAM] = evaluate_embeddings(colour_histogram_embeddings(spec, SPLIT), spec, SPLIT).to_dict()
    random_map = trained.asfr.random_map
    rows[RANDOM] = {"map": random_map.pop("overall"), "map_per_attribute": random_map}
    return trained_embeddings, rows


def draw_pictures(model, info, spec: DatasetSpec, out: Path, trained_embeddings: np.ndarray) -> dict[str, list[str]]:
    """``grids/<attribute>.png`` and ``attention/<attribute>.png``; returns the file names written."""
    import torch

    from agman.data.images import load_image
    from agman.data.regions import read_regions_file, regions_path
    from agman.data.transforms import build_transform
    from agman.engine.evaluate import rank_split
    from agman.render import attention_on_original, captioned_strip, result_grid
    from agman.render import save_picture as save

    split = spec.split(SPLIT)
    written: dict[str, list[str]] = {"grids": [], "attention": []}
    transform = build_transform(info.input_size, train=False, crop_ratio=info.crop_ratio)
    boxes_file = regions_path(spec.root, SPLIT)
    regions = read_regions_file(boxes_file, split, spec.attribute_names) if boxes_file.is_file() else {}
    model.eval()
    for a, attr in enumerate(spec.attributes):
        rows = np.flatnonzero(split.queries[:, 1] == a)
        if not len(rows):
            continue
        q = int(rows[0])
        q_image, q_value = int(split.queries[q, 0]), int(split.queries[q, 2])
        images, scores = rank_split(trained_embeddings, split, a, q, return_scores=True)
        results = []
        for img, score in zip(images[:TOP_K], scores[:TOP_K]):
            value = int(split.labels[img, a])
            results.append((load_image(spec.root / split.paths[img]), float(score), value == q_value))
        title = f"{attr.name} = {attr.values[q_value]} (query test image {q_image}); green: same value, red: other"
        grid = result_grid(load_image(spec.root / split.paths[q_image]), results, title)
        save(grid, out / "grids" / f"{attr.name}.png")
        written["grids"].append(f"{attr.name}.png")

        sample = [int(i) for i in split.queries[rows[:ATTENTION_IMAGES], 0]]
        pil = [load_image(spec.root / split.paths[i]) for i in sample]
        with torch.no_grad():
            maps = model.attention_map(torch.stack([transform(p) for p in pil]), torch.full((len(pil),), a))
        if maps is None:
            continue
        tiles = [attention_on_original(p, m.float().numpy(), info.input_size, info.crop_ratio, size=ATTENTION_TILE,
                                       boxes=regions[i].boxes.get(attr.name, ()) if i in regions else ())
                 for i, p, m in zip(sample, pil, maps)]
        labels = [f"{attr.values[int(split.labels[i, a])]} (image {i})" for i in sample]
        sheet = captioned_strip(tiles, labels, f"ASA attention for {attr.name} (red = high) on the original image"
                                + (", yellow: the attribute's region" if regions else ""), tile_size=ATTENTION_TILE)
        save(sheet, out / "attention" / f"{attr.name}.png")
        written["attention"].append(f"{attr.name}.png")
    return written


def verdict(rows: dict, names: list[str]) -> str:
    """One sentence: the trained model's test MAP against every other row, and whether it beats random everywhere."""
    trained, rand, hist = rows[TRAINED], rows[RANDOM], rows[HISTOGRAM]
    against = [(label, rows[label]["map"]) for label in (UNTRAINED, WARM_ONLY, CLASSIFIER) if label in rows]
    above = {a: trained["map_per_attribute"][a] > rand["map_per_attribute"][a] for a in names}
    below = [a for a, ok in above.items() if not ok]
    return (f"AG-MAN test MAP {100 * trained['map']:.2f}% vs "
            + ", ".join(f"{_short(label)} {100 * m:.2f}% ({trained['map'] / max(m, 1e-12):.2f}x)"
                        for label, m in against)
            + f", colour histogram {100 * hist['map']:.2f}%, random {100 * rand['map']:.2f}%; every attribute above "
            f"random: {'no (' + ', '.join(below) + ')' if below else 'yes'}")


#: The rows whose attention the report compares, and their short names in its table.
LOCATED = ((TRAINED, "trained"), (UNTRAINED, "untrained"), (WARM_ONLY, "warm-up only"))


def localization_section(rows: dict) -> tuple[str, str]:
    """What the attention scores say, as ``(sentence, markdown table)``: per attribute the pointing
    game's accuracy and the energy share of the trained, untrained and warm-up-only networks, each
    measure beside its chance level (a random point, a uniform map), and whether the trained one
    meets the bar (both above chance).  ``("", "")`` when no row was scored (no regions file)."""
    from agman.engine.localization import LocalizationResult
    from agman.engine.report import markdown_table

    found = {short: LocalizationResult.from_dict(rows[label]["localization"])
             for label, short in LOCATED if rows.get(label, {}).get("localization")}
    trained = found.get("trained")
    if trained is None:
        return "", ""
    if not trained.available:
        return f"{trained.model} has no attention map to score", ""
    met = trained.meets()
    header = ["attribute", "pairs", *(f"pointing, {k}" for k in found), "pointing chance",
              *(f"energy, {k}" for k in found), "energy chance", "above chance (trained)"]
    table = []
    for r in [*trained.rows, trained.overall]:
        others = [other.overall if r.attribute == "all" else other.row(r.attribute) for other in found.values()]
        table.append([r.attribute, r.pairs, *(o.pointing.mean for o in others), r.pointing_chance.mean,
                      *(o.energy.mean for o in others), r.energy_chance.mean,
                      "" if r.attribute == "all" else ("yes" if met[r.attribute] else "no")])
    ok = [a for a, v in met.items() if v]
    missed = [trained.row(a) for a, v in met.items() if not v]
    sentence = (f"Pointing game (tolerance {trained.tolerance:.1f} px on the {trained.input_size}-px crop) and energy "
                f"share of the {trained.grid[0]}x{trained.grid[1]} map: the trained model's attention is above "
                f"chance on both for {len(ok)} of {len(met)} attributes" + (f" ({', '.join(ok)})" if ok else ""))
    if missed:
        sentence += "; not for " + "; ".join(
            f"{r.attribute} (pointing {r.pointing.mean:.2f}, chance {r.pointing_chance.mean:.2f}; energy "
            f"{r.energy.mean:.2f}, chance {r.energy_chance.mean:.2f})" for r in missed)
    whole = trained.overall
    sentence += (f". Averaged over attributes the pointing accuracy is {whole.pointing.mean:.2f} trained"
                 + "".join(f", {other.overall.pointing.mean:.2f} {k}" for k, other in found.items()
                           if k != "trained" and other.available)
                 + f" (a random point: {whole.pointing_chance.mean:.2f}) and the energy share "
                 f"{whole.energy.mean:.2f} trained"
                 + "".join(f", {other.overall.energy.mean:.2f} {k}" for k, other in found.items()
                           if k != "trained" and other.available)
                 + f" (a uniform map: {whole.energy_chance.mean:.2f})")
    return sentence, markdown_table(header, table, digits=2)


CLASSIFIER_IS = (
    "The classifier row is a supervised baseline trained on the very labels being retrieved: the warm-up's "
    "ResNet value classifier (one softmax head per attribute, trained on every train image's value of every "
    "attribute) ranks the images by the probability that they carry the query's value. AG-MAN sees the same "
    "labels only through triplets (same value or not) and retrieves with its own embedding, without those heads")


def against_classifier(rows: dict, names: list[str]) -> str:
    """What the classifier row is (:data:`CLASSIFIER_IS`) and, per attribute and overall, the test
    MAPs of the trained AG-MAN against it, winners first; "" without a classifier row."""
    if CLASSIFIER not in rows:
        return ""
    trained, classifier = rows[TRAINED], rows[CLASSIFIER]
    pairs = [(a, trained["map_per_attribute"][a], classifier["map_per_attribute"][a]) for a in names]

    def listed(items):
        return ", ".join(f"{a} ({100 * t:.2f} vs {100 * c:.2f})" for a, t, c in items) or "none"

    won, lost = [p for p in pairs if p[1] > p[2]], [p for p in pairs if p[1] <= p[2]]
    overall = "above" if trained["map"] > classifier["map"] else "not above"
    return (f"{CLASSIFIER_IS}. AG-MAN's test MAP is {overall} it: {100 * trained['map']:.2f}% vs "
            f"{100 * classifier['map']:.2f}%. AG-MAN wins on {len(won)} of {len(pairs)} attributes: {listed(won)}; "
            f"it loses on {listed(lost)}")


def _short(label: str) -> str:
    """A row label as the verdict names it: what is in its brackets for the AG-MAN rows, else itself."""
    return label.split("(")[1].rstrip(")") if label.startswith("AG-MAN (") else label


def write_report(out: Path, config: RunConfig, rows: dict, names: list[str], pictures: dict[str, list[str]],
                 seconds: dict[str, float], where: tuple[str, str] = ("", "")) -> str:
    """``report.md`` (atomically): what was run, the verdict, where the attention looks
    (:func:`localization_section`), the timings, links to tables and pictures."""
    sentence = verdict(rows, names)
    warmup = config.warmup.epochs
    how = (f"a ResNet trunk warmed up for {warmup} epochs on the train split's attribute values (the offline "
           "stand-in for ImageNet weights, docs/training.md), then the paper's AG-MAN training"
           if warmup else "from scratch")
    lines = [
        "# agman demo report", "",
        f"Trained `{config.model.name}` on the synthetic garments, {how} "
        f"({config.data.input_size} px, backbone {config.model.options.get('backbone')}, "
        f"{config.train.epochs} epochs x {config.train.triplets_per_epoch} triplets).", "",
        f"**{sentence}.**", "",
        *([f"{versus}.", ""] if (versus := against_classifier(rows, names)) else []),
        f"Wall time {seconds['total'] / 60:.1f} min: data {seconds['data']:.0f} s, "
        f"training {seconds['training']:.0f} s, the rest evaluation and pictures.", "",
        "- [metrics.md](metrics.md): MAP per attribute (%), Recall@k / Precision@k",
        "- ![training curves](curves.png)", "",
        *(["## Where the attention looks (test split; boxes only score, they never train)", "",
           f"{where[0]}.", "", where[1], ""] if where[0] else []),
        "## Top-10 retrievals (green: same value as the query, red: another value)", "",
        *[f"![{p}](grids/{p})" for p in pictures["grids"]], "",
        "## ASA attention (red = high)", "",
        *[f"![{p}](attention/{p})" for p in pictures["attention"]], "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return sentence
