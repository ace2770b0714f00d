"""Data: sources into memory, preprocessing fitted on training data, and input pipelines."""

from ae_jax.data.sources import ArrayData, DATASETS, available, data_dir, load

__all__ = ["ArrayData", "DATASETS", "available", "data_dir", "load"]
