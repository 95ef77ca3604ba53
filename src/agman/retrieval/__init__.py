"""Retrieval layer: the catalog index, the Retriever, pictures.

``agman.Retriever`` is :class:`agman.retrieval.search.Retriever`.  Importing this package does not
import torch, faiss or pymilvus; they load on first use.

Modules, in the order data flows through them: ``imagesets`` (what to index) / ``catalog`` (the
catalog schema) -> ``build`` (plan, embed in resumable per-rank shards, commit; ``work`` its work
folder, ``ranks`` its torchrun collectives; ``extend`` the checks of ``agman index --extend``)
through ``embedder`` (the Embedder: model, transform, device, lock, batching) into a backend:
``backends`` is the registry (a location -> ``backends/faiss`` an index folder of FAISS files,
``backends/milvus`` a Milvus Lite file or server collection, ``backends/memory`` numpy in this
process), ``targets`` what each checks when a build opens it, ``info`` / ``items`` the index's
description and item records, all behind ``store`` (the ``VectorStore`` / ``CatalogWriter`` /
``Backend`` protocols and their declared ``Capabilities``) -> ``filters`` (the filter language:
``filter_ast``, ``filter_syntax``; a numpy mask, or a Milvus expression in the Milvus backend)
-> ``query`` (attributes parsed once; what a query may be; k limits) -> ``ranking`` (exact
weighted scores, the tie rule, the threshold algorithm) -> ``search`` (the Retriever = store +
embedder + ranking; ``attention`` its attention pictures) -> ``results`` (what a search returns:
hits, predicted values, match summaries, tables and HTML) -> ``render`` (pictures).
"""
from agman.retrieval.build import BuildSummary, build_index
from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.query import AttributeWeights
from agman.retrieval.results import Hit, MatchSummary, Prediction, SearchResult
from agman.retrieval.search import QueryError, Retriever
from agman.retrieval.imagesets import ImageSet, from_csv, from_directory, from_split
from agman.retrieval.store import VectorStore

__all__ = [
    "AttributeWeights",
    "BuildSummary",
    "Hit",
    "ImageSet",
    "IndexConfig",
    "IndexInfo",
    "MatchSummary",
    "Prediction",
    "QueryError",
    "Retriever",
    "SearchResult",
    "VectorStore",
    "build_index",
    "from_csv",
    "from_directory",
    "from_split",
]
