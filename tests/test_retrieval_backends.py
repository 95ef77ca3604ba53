"""The backend registry: a location resolves to one backend, in one place."""
from __future__ import annotations

import pytest

from agman.errors import InvalidValueError
from agman.retrieval.backends import BACKENDS, backend_of, backend_named, locate, parallel_writes, unguarded_writes
from agman.retrieval.query import QueryError


@pytest.mark.parametrize("location, name", [
    ("catalog.db", "milvus"), ("http://host:19530", "milvus"), ("memory://shop", "memory"),
    ("/data/index", "faiss"), ("index-folder", "faiss"),
])
def test_a_location_resolves_to_one_backend(location, name):
    assert backend_of(location).name == name
    assert [b.name for b in BACKENDS if b.claims(location)][0] == name


def test_what_a_backend_declares_about_writes():
    assert unguarded_writes("catalog.db") and not unguarded_writes("http://host:19530")
    assert parallel_writes("http://host:19530") and not parallel_writes("catalog.db")
    assert not parallel_writes("/data/index") and not unguarded_writes("memory://x")


def test_connection_options_reach_only_the_backend_that_takes_them():
    target = locate("http://host:19530", collection="shop", request_timeout=5.0)
    assert (target.collection, target.request_timeout) == ("shop", 5.0)
    with pytest.raises(InvalidValueError):  # --backend milvus names the backend: its own check refuses the file
        locate("catalog.sqlite", backend="milvus")
    with pytest.raises(QueryError, match="--collection names a Milvus collection"):
        locate("/data/index", collection="shop")
    assert backend_named("memory").name == "memory"
