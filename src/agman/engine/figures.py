"""The paper's Fig. 8 and Fig. 9 from an evaluated split (``agman eval --figures N``).

* Fig. 8, triplet relation prediction: per triplet of the split's lists, the anchor, then the item
  the model ranks closer (#1, 'Close') and the one it ranks farther (#2, 'Far'); green frames (and
  "right" in the title) where the lists agree with the model's verdict, red ("wrong") where not.
* Fig. 9, retrieval failures: the queries whose top-ranked candidate has another value, most
  confident first (one per attribute in turn), each with its top results in evaluation's order
  (green: same value, red: another) and, where the model has spatial attention, the attention for
  the attribute over every image (red = high).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agman.data.images import load_image
from agman.data.spec import DatasetSpec, Split
from agman.data.transforms import build_transform, model_view
from agman.engine.checkpoint import load_model
from agman.engine.config import stored_for_eval
from agman.engine.evaluate import attribute_rows, iter_attribute_rankings, rank_split
from agman.render import attention_overlay, result_grid, save_picture, stack_vertically

TOP_K = 5
TILE = 128


def _image(spec: DatasetSpec, split: Split, index: int) -> Image.Image:
    return load_image(spec.root / split.paths[index])


def verdicts(embeddings: np.ndarray, split: Split, n: int) -> list[tuple[int, int, int, int, float, float]]:
    """``n`` triplets of the lists, taken in turn from each attribute in list order:
    ``(attribute, anchor, far, close, s(anchor, close), s(anchor, far))`` (dot products, as TR)."""
    lists = sorted((split.triplets or {}).items())
    out, depth = [], 0
    while len(out) < n and any(depth < len(rows) for _, rows in lists):
        for a, rows in lists:
            if depth < len(rows) and len(out) < n:
                anchor, far, close = (int(i) for i in rows[depth])
                e = embeddings[:, a].astype(np.float64)
                out.append((a, anchor, far, close, float(e[anchor] @ e[close]), float(e[anchor] @ e[far])))
        depth += 1
    return out


def triplet_figure(spec: DatasetSpec, split_name: str, embeddings: np.ndarray, n: int = 6) -> Image.Image | None:
    """Fig. 8 for ``n`` triplets of the split's lists; None when it has none."""
    split = spec.split(split_name)
    if not split.triplets:
        return None
    rows = []
    for a, anchor, far, close, s_close, s_far in verdicts(embeddings, split, n):
        right = s_close > s_far
        nearer, farther = ((close, s_close), (far, s_far)) if right else ((far, s_far), (close, s_close))
        results = [(_image(spec, split, i), s, right) for i, s in (nearer, farther)]
        title = f"{spec.attributes[a].name}: #1 Close, #2 Far ({'right' if right else 'wrong'})"
        rows.append(result_grid(_image(spec, split, anchor), results, title, tile_size=TILE))
    return stack_vertically(rows)


def failures(embeddings: np.ndarray, split: Split, n_attributes: int, n: int) -> list[tuple[int, int, float]]:
    """Up to ``n`` ``(attribute, query row, top-1 score)`` whose top-ranked candidate has another
    value than the query, most confident first within each attribute, one attribute after another."""
    per_attribute = []
    for a in range(n_attributes):
        wrong, c_rows = [], attribute_rows(split, a)[1]
        for rows, order, scores in iter_attribute_rankings(embeddings, split, a):
            top = order[:, 0]
            values = split.labels[split.candidates[c_rows[top], 0], a]
            for r, v, s in zip(rows, values, scores[np.arange(len(rows)), top]):
                if v != split.queries[r, 2]:
                    wrong.append((a, int(r), float(s)))
        per_attribute.append(sorted(wrong, key=lambda w: -w[2]))
    out, depth = [], 0
    while len(out) < n and any(depth < len(w) for w in per_attribute):
        out += [w[depth] for w in per_attribute if depth < len(w)][: n - len(out)]
        depth += 1
    return out


def failure_figure(model: torch.nn.Module, input_size: int, crop_ratio: float, spec: DatasetSpec, split_name: str,
                   embeddings: np.ndarray, n: int = 4) -> Image.Image | None:
    """Fig. 9 for up to ``n`` failed queries; None when the split has no queries or no failure."""
    split = spec.split(split_name)
    if not len(split.queries):
        return None
    transform = build_transform(input_size, train=False, crop_ratio=crop_ratio)
    rows = []
    for a, q_row, _ in failures(embeddings, split, spec.n_attributes, n):
        q_image, q_value = int(split.queries[q_row, 0]), int(split.queries[q_row, 2])
        images, scores = rank_split(embeddings, split, a, q_row, return_scores=True)
        shown = [q_image, *(int(i) for i in images[:TOP_K])]
        pil = [_image(spec, split, i) for i in shown]
        with torch.no_grad():
            maps = model.attention_map(torch.stack([transform(p) for p in pil]), torch.full((len(pil),), a))
        if maps is not None:
            pil = [attention_overlay(model_view(p, input_size, crop_ratio), m.float().numpy(), 0.5)
                   for p, m in zip(pil, maps)]
        results = [(p, float(s), int(split.labels[i, a]) == q_value) for p, i, s in zip(pil[1:], shown[1:], scores)]
        attr = spec.attributes[a]
        title = (f"{attr.name} = {attr.values[q_value]} (query image {q_image}); red: another value"
                 + ("; attention for the attribute, red = high" if maps is not None else ""))
        rows.append(result_grid(pil[0], results, title, tile_size=TILE))
    return stack_vertically(rows) if rows else None


def draw_eval_figures(checkpoint: str | Path, split: str, embeddings: np.ndarray, out: str | Path, n: int, *,
                      data: dict | None = None, device: str | torch.device = "cpu") -> list[Path]:
    """``fig8-triplets-<split>.png`` and ``fig9-failures-<split>.png`` into ``out`` where the split
    allows them (triplet lists; queries with a failure); returns the files written."""
    model, info = load_model(checkpoint, device)
    data_cfg, _ = stored_for_eval(info.config, data, source=str(checkpoint))
    spec = data_cfg.open()
    model = model.float().cpu().eval()
    pictures = {f"fig8-triplets-{split}.png": triplet_figure(spec, split, embeddings, n),
                f"fig9-failures-{split}.png": failure_figure(model, info.input_size, info.crop_ratio, spec, split,
                                                             embeddings, n)}
    written = []
    for name, picture in pictures.items():
        if picture is not None:
            path = Path(out) / name
            save_picture(picture, path)
            written.append(path)
    return written
