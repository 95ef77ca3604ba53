"""Fig. 8 (triplet verdicts) and Fig. 9 (retrieval failures with attention) from an evaluated split."""
from __future__ import annotations

import numpy as np
import torch

from agman.data.source import open_data
from agman.engine.evaluate import rank_split
from agman.models.registry import build_model
from agman.engine import figures as F


def test_fig8_verdicts_follow_the_lists_and_the_scores(csn_root):
    spec = open_data(csn_root)
    split = spec.split("test")
    emb = np.random.default_rng(0).normal(size=(len(split), spec.n_attributes, 8)).astype(np.float32)
    chosen = F.verdicts(emb, split, 5)
    assert len(chosen) == 5
    assert len({a for a, *_ in chosen}) == min(5, len(split.triplets))  # attributes taken in turn
    for a, anchor, far, close, s_close, s_far in chosen:
        assert [anchor, far, close] in split.triplets[a].tolist()
        assert s_close == np.float64(emb[anchor, a]) @ emb[close, a].astype(np.float64)
        assert s_far == np.float64(emb[anchor, a]) @ emb[far, a].astype(np.float64)
    picture = F.triplet_figure(spec, "test", emb, 3)
    one = F.triplet_figure(spec, "test", emb, 1)
    assert picture.height == 3 * one.height and picture.width == one.width  # one row per triplet


def test_fig9_shows_only_queries_whose_top_result_is_wrong(asen_root):
    spec = open_data(asen_root)
    split = spec.split("test")
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(split), spec.n_attributes, 8)).astype(np.float32)
    # attribute 0 embedded by its value (perfect ranking: no failure), attribute 1 at random
    emb[:, 0] = 0
    emb[np.arange(len(split)), 0, split.labels[:, 0]] = 1
    found = F.failures(emb, split, spec.n_attributes, 10)
    assert found and all(a == 1 for a, _, _ in found)
    wrong = 0
    for q in np.flatnonzero(split.queries[:, 1] == 1):
        images = rank_split(emb, split, 1, int(q))
        wrong += int(split.labels[images[0], 1] != split.queries[q, 2])
    assert len(found) == min(10, wrong)
    for a, q, score in found:
        images, scores = rank_split(emb, split, a, q, return_scores=True)
        assert split.labels[images[0], a] != split.queries[q, 2] and score == scores[0]
    assert [s for _, _, s in found] == sorted((s for _, _, s in found), reverse=True)  # most confident first

    model = build_model("agman", spec.n_attributes, backbone="resnet18", embedding_dim=8, attention_dim=16).eval()
    torch.manual_seed(0)
    picture, one = (F.failure_figure(model, 32, 1.0, spec, "test", emb, n) for n in (2, 1))
    assert picture.height == min(2, len(found)) * one.height > F.TILE  # one row per failed query
    emb[:, 1] = 0
    emb[np.arange(len(split)), 1, split.labels[:, 1]] = 1
    assert F.failure_figure(model, 32, 1.0, spec, "test", emb, 2) is None  # nothing failed: no picture
