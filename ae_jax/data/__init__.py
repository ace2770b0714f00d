"""Data: sources into memory, preprocessing fitted on training data, and input pipelines."""

from ae_jax.data.pipeline import (ArrayBatches, eval_batches, make_train_loader, prefetch,
                                  shard_for_devices)
from ae_jax.data.preprocess import (Scaler, check_finite, robust_scaler, sliding_windows,
                                    train_val_split)
from ae_jax.data.sources import ArrayData, DATASETS, available, data_dir, load

__all__ = [
    "ArrayBatches", "ArrayData", "DATASETS", "Scaler", "available", "check_finite", "data_dir",
    "eval_batches", "load", "make_train_loader", "prefetch", "robust_scaler",
    "shard_for_devices", "sliding_windows", "train_val_split",
]
