"""Retrieval layer: one-pass embedding, FAISS indexes, the Retriever, pictures."""
