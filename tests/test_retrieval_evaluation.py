"""Acceptance: search results over an index of a dataset split equal the evaluation's rankings
for the same checkpoint (same order for the same query and attribute)."""
from __future__ import annotations

import numpy as np
from conftest import make_asen
from test_retrieval_index import tiny_checkpoint

from agman.data.layouts import open_dataset
from agman.retrieval.build import build_index
from agman.retrieval.search import Retriever
from agman.retrieval.imagesets import from_split


def test_search_results_equal_the_evaluation_ranking(tmp_path):
    """Index a split's candidates; an attribute-filtered search for each query gives evaluation's order."""
    from agman.engine.checkpoint import load_model
    from agman.engine.evaluate import embed_split, rank_split

    spec = open_dataset(make_asen(tmp_path / "ds", n_per_split=(12, 10, 40), values=(3, 2), single=True))
    ckpt = tiny_checkpoint(tmp_path / "c.pt", spec.attributes, seed=3)
    out = tmp_path / "idx"
    build_index(out, from_split(spec, "test", "candidates"), ckpt, batch_size=1)
    model, info = load_model(ckpt)
    emb = embed_split(model, spec, "test", input_size=info.input_size, crop_ratio=info.crop_ratio, batch_size=1)
    r = Retriever.open(out)
    s = spec.split("test")
    row_of_image = {p: i for i, p in enumerate(s.paths)}
    checked = 0
    for query_row, (image, a, _) in enumerate(s.queries):
        expected = rank_split(emb, s, int(a), query_row)
        res = r.search(spec.root / s.paths[image], spec.attributes[a].name, k=1000, annotated_only=True)
        assert [row_of_image[h.id] for h in res.hits] == expected.tolist()
        assert res.candidates == len(expected)
        # the embeddings, and the scores, are the evaluation's
        _, ev_scores = rank_split(emb, s, int(a), query_row, return_scores=True)
        assert np.allclose([h.score for h in res.hits], ev_scores, atol=1e-6)
        checked += 1
    assert checked == len(s.queries) > 0
