"""Retrieval layer: the catalog index (one FAISS index per attribute), the Retriever, pictures.

``agman.Retriever`` is :class:`agman.retrieval.search.Retriever`.  Importing this package does not
import torch or faiss; they load on first use.
"""
from agman.retrieval.index import CatalogIndex, IndexConfig, build_index
from agman.retrieval.search import Hit, QueryError, Retriever, SearchResult
from agman.retrieval.sources import ImageSet, from_csv, from_directory, from_split

__all__ = [
    "CatalogIndex",
    "Hit",
    "ImageSet",
    "IndexConfig",
    "QueryError",
    "Retriever",
    "SearchResult",
    "build_index",
    "from_csv",
    "from_directory",
    "from_split",
]
