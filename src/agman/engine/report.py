"""Result tables like the paper's Tables 2–8 (terminal text, CSV, Markdown) and training curves.

Tables are built from the plain metric dicts of :meth:`agman.engine.evaluate.EvalResult.to_dict`
(keyed by a row label: a model, an ablation variant), so results read back from checkpoints and
results computed now combine the same way.  MAP, recall, precision and accuracy are shown in %.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from agman.fileio import atomic_write_text


def _pct(value) -> float:
    return float("nan") if value is None else 100.0 * float(value)


def _fmt(value, digits: int) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def asfr_table(results: dict[str, dict], attribute_names: list[str], extra: dict[str, list[str]] | None = None):
    """``(header, rows)``: one row per label with MAP per attribute and overall MAP (Tables 2, 3, 5–8),
    and the attention scores (:data:`LOCALIZATION_COLUMNS`) when any result has them.

    ``extra`` adds leading columns (e.g. the ablation switches): ``{column: [value per row]}``.
    """
    extra = extra or {}
    located = any("localization" in m for m in results.values())
    header = ["method", *extra, *attribute_names, "MAP", *(LOCALIZATION_COLUMNS if located else ())]
    rows = []
    for i, (label, m) in enumerate(results.items()):
        per = m.get("map_per_attribute", {})
        rows.append([label, *(col[i] for col in extra.values()), *(_pct(per.get(a)) for a in attribute_names),
                     _pct(m.get("map")), *(localization_cells(m.get("localization")) if located else ())])
    return header, rows


#: Columns a table gains when its results carry attention scores (mean over attributes, in %): the
#: pointing game and the energy share, each beside its chance level (:mod:`agman.engine.localization`).
LOCALIZATION_COLUMNS = ("pointing", "pointing chance", "energy", "energy chance")
_LOCALIZATION_KEYS = ("pointing", "pointing_chance", "energy", "energy_chance")


def localization_cells(scores: dict | None) -> list:
    """The :data:`LOCALIZATION_COLUMNS` of one result's ``localization`` dict (``LocalizationResult.to_dict``):
    "n/a" for a model without maps or scores written before these measures, NaN where nothing was scored."""
    if scores is None:
        return [float("nan")] * len(LOCALIZATION_COLUMNS)
    if not scores.get("available") or not scores.get("all") or "energy" not in scores["all"]:
        return ["n/a"] * len(LOCALIZATION_COLUMNS)
    return [_pct(scores["all"][k]["mean"]) for k in _LOCALIZATION_KEYS]


def tr_table(results: dict[str, dict], attribute_names: list[str]):
    """``(header, rows)`` like Table 4: TR accuracy per condition, average loss, accuracy."""
    header = ["method", *attribute_names, "average loss", "accuracy"]
    rows = []
    for label, m in results.items():
        per = m.get("tr_accuracy_per_attribute", {})
        rows.append([label, *(_pct(per.get(a)) for a in attribute_names), float(m.get("tr_loss", float("nan"))),
                     _pct(m.get("tr_accuracy"))])
    return header, rows


def retrieval_table(results: dict[str, dict]):
    """``(header, rows)``: overall Recall@k and Precision@k per label."""
    ks = sorted({int(k) for m in results.values() for k in m.get("recall", {})})
    header = ["method", *(f"R@{k}" for k in ks), *(f"P@{k}" for k in ks)]
    rows = []
    for label, m in results.items():
        rec = {int(k): v for k, v in m.get("recall", {}).items()}
        pre = {int(k): v for k, v in m.get("precision", {}).items()}
        rows.append([label, *(_pct(rec.get(k)) for k in ks), *(_pct(pre.get(k)) for k in ks)])
    return header, rows


def format_table(header: list[str], rows: list[list], digits: int = 2) -> str:
    """Aligned plain-text table (numbers right-aligned)."""
    cells = [[str(h) for h in header]] + [[_fmt(v, digits) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(header))]

    def line(r):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list], digits: int = 2) -> str:
    numeric = [all(isinstance(r[i], (int, float)) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(str(h) for h in header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_fmt(v, digits) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str | Path, header: list[str], rows: list[list], digits: int = 4) -> Path:
    """A table as CSV, written atomically."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(header)
    w.writerows([[_fmt(v, digits) for v in r] for r in rows])
    return atomic_write_text(path, text.getvalue())


def result_tables(results: dict[str, dict], attribute_names: list[str],
                  extra: dict[str, list[str]] | None = None) -> list[tuple[str, list[str], list[list]]]:
    """The tables that apply to ``results``: ``[(title, header, rows)]`` (ASFR MAP, R@k/P@k, TR)."""
    tables = []
    if any("map" in m for m in results.values()):
        asfr = {k: m for k, m in results.items() if "map" in m}
        ex = {c: [v for v, key in zip(vals, results) if key in asfr] for c, vals in (extra or {}).items()}
        tables.append(("MAP (%) per attribute and overall", *asfr_table(asfr, attribute_names, ex)))
        tables.append(("Recall@k and Precision@k (%)", *retrieval_table(asfr)))
    if any("tr_accuracy" in m for m in results.values()):
        tr = {k: m for k, m in results.items() if "tr_accuracy" in m}
        tables.append(("Triplet relation prediction: accuracy (%) and average loss", *tr_table(tr, attribute_names)))
    return tables


def write_report_tables(out_dir: str | Path, stem: str, results: dict[str, dict], attribute_names: list[str],
                        title: str = "", extra: dict[str, list[str]] | None = None) -> str:
    """Write ``<stem>.csv`` (first table; further tables as ``<stem>-<n>.csv``) and ``<stem>.md``
    (all tables) into ``out_dir``; return the terminal text of all tables."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = result_tables(results, attribute_names, extra)
    md = [f"# {title}\n"] if title else []
    text = [title] if title else []
    for i, (name, header, rows) in enumerate(tables):
        write_csv(out_dir / (f"{stem}.csv" if i == 0 else f"{stem}-{_slug(name)}.csv"), header, rows)
        md += [f"## {name}\n", markdown_table(header, rows), ""]
        text += [f"\n{name}", format_table(header, rows)]
    atomic_write_text(out_dir / f"{stem}.md", "\n".join(md) + "\n")
    return "\n".join(text).strip("\n")


def _slug(text: str) -> str:
    word = text.split()[0].lower()
    return "".join(c for c in word if c.isalnum()) or "table"


# --------------------------------------------------------------------------- curves
def training_curves_figure(history: list[dict], title: str = ""):
    """The matplotlib figure of :func:`plot_training_curves`: three panels over integer epochs, each
    legend below its panel (outside the lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    ax = axes[0]
    for key in sorted({k for r in history for k in r if k.startswith("train_")}):
        ax.plot(epochs, [r.get(key, math.nan) for r in history], marker=".", label=key[6:])
    ax.set(title="training loss", xlabel="epoch")
    _legend_below(ax, ax.get_legend_handles_labels())
    ax = axes[1]
    score_keys = sorted({k for r in history for k in r if k.endswith("_score")})
    for key in score_keys:
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linewidth=2.5, label=key)
    for key in sorted({k for r in history for k in r if "_map_" in k}):
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1, alpha=0.7, label=key.split("_map_", 1)[1])
    ax.set(title="validation (MAP / TR accuracy)", xlabel="epoch")
    _legend_below(ax, ax.get_legend_handles_labels())
    ax = axes[2]
    for key in sorted({k for r in history for k in r if k.startswith("weight_")}):
        ax.plot(epochs, [r.get(key, math.nan) for r in history], marker=".", label=key)
    ax.set(title="loss weights and learning rate", xlabel="epoch")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r.get("lr", math.nan) for r in history], color="grey", linestyle="--", label="lr")
    ax2.set_ylabel("lr")
    handles, labels = ax.get_legend_handles_labels()
    handles2, labels2 = ax2.get_legend_handles_labels()
    _legend_below(ax, (handles + handles2, labels + labels2))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """One PNG: training losses, validation score (and per-attribute MAP), loss weights and lr per epoch."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = training_curves_figure(history, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")  # the legends below the panels are kept
    plt.close(fig)
    return path


def _legend_below(ax, handles_labels) -> None:
    handles, labels = handles_labels
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, len(handles)),
                  fontsize=8, frameon=False)


# --------------------------------------------------------------------------- sample retrievals
SHEET_GREEN, SHEET_RED, SHEET_BLUE = (34, 160, 60), (214, 40, 57), (40, 96, 200)


def retrieval_sheet(rows: list[tuple[str, object, list[tuple[object, bool]]]], tile: int = 64, title: str = ""):
    """Sample retrievals of a run as one PIL image: per row a caption line, then the query (blue
    frame) and its ranked results (green frame: same value as the query, red: another value).

    ``rows``: ``[(caption, query PIL image, [(result PIL image, same value), ...])]``.
    """
    from PIL import Image, ImageDraw, ImageFont

    frame, gap = max(2, tile // 20), 4
    font = ImageFont.load_default()
    line = 14
    columns = 1 + max((len(results) for _, _, results in rows), default=0)
    width = gap + columns * (tile + gap) + gap
    top = line + gap if title else 0
    sheet = Image.new("RGB", (width, top + len(rows) * (line + tile + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, 2), title, fill="black", font=font)
    for r, (caption, query, results) in enumerate(rows):
        y = top + r * (line + tile + gap)
        draw.text((gap, y + 1), caption, fill="black", font=font)
        cells = [(query, SHEET_BLUE)] + [(image, SHEET_GREEN if same else SHEET_RED) for image, same in results]
        for c, (image, colour) in enumerate(cells):
            x = gap + c * (tile + gap) + (gap if c else 0)
            thumb = image.convert("RGB").resize((tile - 2 * frame, tile - 2 * frame))
            draw.rectangle([x, y + line, x + tile - 1, y + line + tile - 1], fill=colour)
            sheet.paste(thumb, (x + frame, y + line + frame))
    return sheet
