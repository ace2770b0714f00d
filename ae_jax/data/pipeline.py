"""Input pipelines over in-memory data: a Grain training loader and padded eval batches.

A training loader's iterator state is `bytes` (grain's JSON encoding). Store it in a
checkpoint as `state.decode()` (a JSON string) or `np.frombuffer(state, np.uint8)`, and
restore with `it.set_state(text.encode())` or `it.set_state(array.tobytes())`.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from typing import Any, Iterable, Iterator

from absl import flags
import grain.python as grain
import jax
import numpy as np

from ae_jax.data.sources import ArrayData
from ae_jax.errors import DataError


class ArraySource(grain.RandomAccessDataSource):
  """Random access to the examples of an `ArrayData` as {'x': (...), 'y': ()} records."""

  def __init__(self, data: ArrayData):
    self._x = data.x
    self._y = data.y
    digest = hashlib.sha1(np.ascontiguousarray(data.x).tobytes())
    if data.y is not None:
      digest.update(np.ascontiguousarray(data.y).tobytes())
    self._repr = (f"ArraySource(name={data.name!r}, shape={tuple(data.x.shape)}, "
                  f"sha1={digest.hexdigest()[:16]})")

  def __repr__(self) -> str:
    """Stable across processes, so a saved iterator state can be checked against the data."""
    return self._repr

  def __len__(self) -> int:
    return int(self._x.shape[0])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = {"x": self._x[index]}
    if self._y is not None:
      record["y"] = self._y[index]
    return record


def make_train_loader(data: ArrayData, *, batch_size: int, seed: int,
                      num_epochs: int | None = None, shard_by_process: bool = True,
                      worker_count: int = 0) -> grain.DataLoader:
  """A shuffled, batched Grain loader of dicts {'x': (B, ...), 'y': (B,)}.

  Epochs follow each other as one stream (reshuffled per epoch by `seed`), so a batch
  may hold examples of two epochs; only the last incomplete batch is dropped.
  `num_epochs=None` repeats forever. With `shard_by_process`, each JAX process reads its
  own 1/process_count of every epoch. 'y' is absent when the data has no labels.

  `iter(loader)` gives an iterator with `get_state() -> bytes` and `set_state(bytes)`;
  see the module docstring for how to store that state.
  """
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  if shard_by_process:
    shard_options = grain.ShardByJaxProcess(drop_remainder=True)
    per_process = len(data) // jax.process_count()
  else:
    shard_options = grain.NoSharding()
    per_process = len(data)
  if per_process < batch_size:
    raise DataError(f"{data.name}: {per_process} examples per process cannot fill one "
                    f"batch of {batch_size}")
  if worker_count and not flags.FLAGS.is_parsed():
    # Grain's worker processes read absl flags; outside absl.app they are unparsed.
    flags.FLAGS.mark_as_parsed()
  sampler = grain.IndexSampler(num_records=len(data), shard_options=shard_options,
                               shuffle=True, seed=seed, num_epochs=num_epochs)
  # The data are in memory: reader threads only add lock and polling overhead (grain's
  # default of 16 threads with a 500-record buffer costs ~1 s a batch on a busy 2-core CPU).
  return grain.DataLoader(data_source=ArraySource(data), sampler=sampler,
                          operations=[grain.Batch(batch_size, drop_remainder=True)],
                          worker_count=worker_count,
                          read_options=grain.ReadOptions(num_threads=0,
                                                         prefetch_buffer_size=0))


class ArrayBatches:
  """Shuffled training batches {'x': (B, ...)} of in-memory data, one gather per batch.

  Each epoch is a fresh permutation drawn from (seed, epoch); the incomplete last batch
  of an epoch is dropped. Iterators have `get_state()` / `set_state()` (JSON bytes), as
  `ae_jax.fit.fit` expects of a loader (pass `make_loader=ArrayBatches`); per-record
  pipelines cost far more than the step of a small tabular model.
  """

  def __init__(self, data: ArrayData, *, batch_size: int, seed: int):
    if not 1 <= batch_size <= len(data):
      raise DataError(f"{data.name}: batch_size={batch_size} for {len(data)} examples")
    self.x, self.batch_size, self.seed = data.x, batch_size, seed

  def __iter__(self) -> "_ArrayBatchIterator":
    return _ArrayBatchIterator(self)


class _ArrayBatchIterator:

  def __init__(self, source: ArrayBatches):
    self._src = source
    self._epoch, self._pos = 0, 0
    self._perm = self._permutation(0)

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self._src.seed, epoch]).permutation(len(self._src.x))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    bs = self._src.batch_size
    if self._pos + bs > len(self._perm):
      self._epoch, self._pos = self._epoch + 1, 0
      self._perm = self._permutation(self._epoch)
    idx = np.sort(self._perm[self._pos:self._pos + bs])
    self._pos += bs
    return {"x": self._src.x[idx]}

  def get_state(self) -> bytes:
    return json.dumps({"epoch": self._epoch, "pos": self._pos}).encode()

  def set_state(self, state: bytes) -> None:
    got = json.loads(state)
    self._epoch, self._pos = int(got["epoch"]), int(got["pos"])
    self._perm = self._permutation(self._epoch)


def eval_batches(data: ArrayData | np.ndarray, batch_size: int) -> Iterator[dict]:
  """Yields every example once, in order, in batches of exactly `batch_size`.

  Each batch is {'x': (B, ...), 'mask': (B,) float32, 'index': (B,) int64} plus
  'y': (B,) when labels exist. The last batch is padded with zeros, mask 0 and index -1.
  """
  if batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {batch_size}")
  if isinstance(data, ArrayData):
    x, y = data.x, data.y
  else:
    x, y = np.asarray(data), None
  n = x.shape[0]
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = batch_size - (stop - start)
    batch = {"x": x[start:stop],
             "mask": np.ones(stop - start, np.float32),
             "index": np.arange(start, stop, dtype=np.int64)}
    if y is not None:
      batch["y"] = y[start:stop]
    if pad:
      fill = {"index": -1}
      batch = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill.get(k, 0), v.dtype)])
               for k, v in batch.items()}
    yield batch


def shard_for_devices(batch: dict, num_devices: int) -> dict:
  """Reshapes every array (B, ...) of a batch to (num_devices, B // num_devices, ...)."""

  def split(leaf):
    leaf = np.asarray(leaf)
    if leaf.ndim == 0 or leaf.shape[0] % num_devices:
      size = leaf.shape[0] if leaf.ndim else "a scalar"
      raise DataError(f"a batch of {size} cannot be split over {num_devices} devices: "
                      "batch_size must be a multiple of the device count")
    return leaf.reshape((num_devices, leaf.shape[0] // num_devices) + leaf.shape[1:])

  if num_devices < 1:
    raise DataError(f"num_devices must be >= 1, got {num_devices}")
  return jax.tree.map(split, batch)


class GlobalBatchSlice:
  """A grain sampler: one process's contiguous slice of every global batch of `base`.

  The stream of `base` is cut into global batches of `global_batch` records; process
  `process_index` of `process_count` gets rows [i*b, (i+1)*b) of each, b = global_batch /
  process_count, so the local batches of processes 0..n-1 concatenated are the global
  batch. The repr leaves out the process index: every process's iterator state is the
  same and one saved state resumes them all.
  """

  def __init__(self, base: grain.IndexSampler, global_batch: int, process_index: int,
               process_count: int):
    if global_batch % process_count:
      raise DataError(f"the global batch of {global_batch} cannot be split over "
                      f"{process_count} processes; choose a multiple of {process_count}")
    self._base = base
    self._global = global_batch
    self._local = global_batch // process_count
    self._offset = process_index * self._local
    self._count = process_count

  def __len__(self) -> int:
    return (len(self._base) // self._global) * self._local

  def __repr__(self) -> str:
    return (f"GlobalBatchSlice(global_batch={self._global}, process_count={self._count}, "
            f"base={self._base!r})")

  def __getitem__(self, index: int):
    batch, row = divmod(index, self._local)
    meta = self._base[batch * self._global + self._offset + row]
    return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


def make_process_train_loader(data: ArrayData, *, global_batch_size: int, seed: int,
                              process_index: int | None = None,
                              process_count: int | None = None,
                              num_epochs: int | None = None) -> grain.DataLoader:
  """This process's part of the batches `make_train_loader` gives one process.

  Every process draws the same shuffled stream (grain's shuffle of the whole dataset
  by `seed`) and reads only its `global_batch_size / process_count` records of each
  global batch: dicts {'x': (b, ...), 'y': (b,)}. With one process the batches equal
  those of `make_train_loader(data, batch_size=global_batch_size, seed=seed)`.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size < 1:
    raise DataError(f"batch_size must be >= 1, got {global_batch_size}")
  if len(data) < global_batch_size:
    raise DataError(f"{data.name}: {len(data)} examples cannot fill one global batch of "
                    f"{global_batch_size}")
  # The shard options of make_train_loader's single process, so the streams agree.
  base = grain.IndexSampler(num_records=len(data),
                            shard_options=grain.ShardOptions(0, 1, drop_remainder=True),
                            shuffle=True, seed=seed, num_epochs=num_epochs)
  sampler = GlobalBatchSlice(base, global_batch_size, process_index, process_count)
  return grain.DataLoader(data_source=ArraySource(data), sampler=sampler,
                          operations=[grain.Batch(global_batch_size // process_count,
                                                  drop_remainder=True)],
                          shard_options=grain.NoSharding(),
                          read_options=grain.ReadOptions(num_threads=0,
                                                         prefetch_buffer_size=0))


_DONE = object()


class _Raised:

  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterator: Iterable[Any], size: int = 2) -> Iterator[Any]:
  """Runs `iterator` in a background thread, `size` items ahead; same items, same order.

  An exception in the producer is raised in the consumer at the point it occurred.
  Closing the returned generator stops the producer.
  """
  buffer: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
    except BaseException as e:  # pylint: disable=broad-except
      put(_Raised(e))
      return
    put(_DONE)

  def consume():
    try:
      while True:
        item = buffer.get()
        if item is _DONE:
          return
        if isinstance(item, _Raised):
          raise item.error
        yield item
    finally:
      stop.set()

  threading.Thread(target=produce, daemon=True, name="ae_jax-prefetch").start()
  return consume()
