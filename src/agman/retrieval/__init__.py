"""Retrieval layer: the catalog index, the Retriever, pictures.

``agman.Retriever`` is :class:`agman.retrieval.search.Retriever`.  Importing this package does not
import torch or faiss; they load on first use.

Modules, in the order data flows through them: ``sources`` (what to index) -> ``build`` (embed in
resumable shards) -> ``faiss_store`` (the FAISS-files backend; ``faiss_index`` its FAISS calls,
``info`` / ``items`` its index.json and items.jsonl) behind ``store.VectorStore`` (the backend
seam) -> ``query`` (attributes parsed once) -> ``ranking`` (exact weighted scores, filters, the
tie rule) -> ``search`` (the Retriever) -> ``results`` (what a search returns: hits, predicted values,
match summaries, tables and HTML) -> ``render`` (pictures).
"""
from agman.retrieval.build import BuildSummary, build_index
from agman.retrieval.info import IndexConfig, IndexInfo
from agman.retrieval.query import AttributeWeights
from agman.retrieval.results import Hit, MatchSummary, Prediction, SearchResult
from agman.retrieval.search import QueryError, Retriever
from agman.retrieval.sources import ImageSet, from_csv, from_directory, from_split
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
