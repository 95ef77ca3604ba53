"""Data layer: dataset layouts -> DatasetSpec, synthetic garments, triplet sampling, transforms, checks."""
from agman.data.spec import UNLABELED, Attribute, DatasetError, DatasetSpec, Split

__all__ = ["UNLABELED", "Attribute", "DatasetError", "DatasetSpec", "Split"]
