"""agman: attribute-specific fashion retrieval with AG-MAN (Xiao & Yamasaki) and its baselines.

Layers, data flowing one way: data -> models -> engine -> retrieval -> cli / service.
"""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: importing agman must not import torch
    if name == "Retriever":
        from agman.retrieval.search import Retriever

        return Retriever
    raise AttributeError(name)
