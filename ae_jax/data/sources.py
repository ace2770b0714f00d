"""Datasets as in-memory arrays: named sources, shared real data, TFDS and files.

`load(spec, split)` turns a string into an `ArrayData`. A spec is one of

- a registered name: `digits`, `mnist_t10k`, `ecg5000`, `binarized_mnist`;
- a registered prefix with an argument: `adbench:<name>`, `tfds:<name>[:split]`;
- a file path: `.npy`, `.npz`, `.csv`, IDX (`*-ubyte`, `*.idx`, optionally `.gz`)
  or UCR text (`.tsv`, `.txt`).

Shared real data is read from `data_dir()`, never copied into the project.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pathlib
import re
import zipfile
import zlib
from typing import Callable

import numpy as np

from ae_jax.errors import ConfigError, DataError
from ae_jax.registry import Registry

KINDS = {2: "vector", 3: "sequence", 4: "image"}

# A loader takes the text after `name:` in the spec (or None) and a split name.
Loader = Callable[[str | None, str | None], "ArrayData"]
DATASETS: Registry[Loader] = Registry("dataset")

MNIST_T10K_TRAIN_SIZE = 8000
ECG5000_SPLITS = ("train", "validation", "test")
BINARIZED_MNIST_SPLITS = ("train", "valid", "test")
# TFDS datasets whose uint8 pixels are already 0/1 (not 0..255): read as is.
TFDS_BINARY = ("binarized_mnist",)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayData:
  """A whole dataset in host memory.

  Attributes:
    x: float32 examples, (N, D) vectors, (N, T, C) sequences or (N, H, W, C) images.
    y: int64 labels (N,), or None when the data has no labels.
    name: where the data came from, e.g. `ecg5000:train`.
    kind: 'vector', 'sequence' or 'image'.
  """

  x: np.ndarray
  y: np.ndarray | None
  name: str
  kind: str

  def __post_init__(self):
    if self.kind not in KINDS.values():
      raise DataError(f"{self.name}: kind must be one of {sorted(KINDS.values())}, "
                      f"got {self.kind!r}")
    if self.y is not None and self.y.shape != (self.x.shape[0],):
      raise DataError(f"{self.name}: labels have shape {self.y.shape}, expected "
                      f"({self.x.shape[0]},) to match x of shape {self.x.shape}")

  def __len__(self) -> int:
    return int(self.x.shape[0])

  def take(self, idx) -> ArrayData:
    """Returns the examples at `idx` (an index array or boolean mask of length N)."""
    idx = np.asarray(idx)
    y = None if self.y is None else self.y[idx]
    return dataclasses.replace(self, x=self.x[idx], y=y)

  def filter_labels(self, labels) -> ArrayData:
    """Returns the examples whose label is in `labels` (e.g. the normal class only)."""
    if self.y is None:
      raise DataError(f"{self.name} has no labels to filter by")
    return self.take(np.isin(self.y, np.asarray(list(np.atleast_1d(labels)))))


def make_array_data(x, y, name: str, kind: str | None = None) -> ArrayData:
  """Casts `x` to float32 and `y` to int64 and infers the kind from `x.ndim`."""
  try:
    x = np.asarray(x, dtype=np.float32)
  except (TypeError, ValueError) as e:
    raise DataError(f"{name}: features are not numeric ({e})") from None
  if kind is None:
    if x.ndim not in KINDS:
      raise DataError(
          f"{name}: features have shape {x.shape}; expected 2-D (N, D) vectors, 3-D "
          "(N, T, C) sequences or 4-D (N, H, W, C) images (cut a single 1-D series "
          "with ae_jax.data.sliding_windows first)")
    kind = KINDS[x.ndim]
  if y is not None:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
      raise DataError(f"{name}: labels have shape {y.shape}, expected ({x.shape[0]},)")
    if y.dtype.kind == "f":
      if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
        raise DataError(f"{name}: labels must be whole numbers")
    elif y.dtype.kind not in "biu":
      raise DataError(f"{name}: labels have dtype {y.dtype}, expected integers")
    y = y.astype(np.int64)
  return ArrayData(x=x, y=y, name=name, kind=kind)


def data_dir() -> pathlib.Path | None:
  """The folder of shared real data, or None when there is none.

  `AE_JAX_DATA_DIR` wins when set: its folder, or None when that folder does not exist
  (so pointing it at a missing path means "no shared data", as on a fresh clone).
  Otherwise the first existing folder of `<project root>/../shared/data` and
  `<cwd>/../shared/data`.
  """
  env = os.environ.get("AE_JAX_DATA_DIR")
  if env:
    path = pathlib.Path(env).expanduser()
    return path if path.is_dir() else None
  project_root = pathlib.Path(__file__).resolve().parents[2]
  for candidate in (project_root.parent / "shared" / "data",
                    pathlib.Path.cwd().parent / "shared" / "data"):
    if candidate.is_dir():
      return candidate
  return None


def _shared_file(*parts: str) -> pathlib.Path:
  root = data_dir()
  if root is None:
    env = os.environ.get("AE_JAX_DATA_DIR")
    where = (f"AE_JAX_DATA_DIR={env} is not a folder" if env
             else "../shared/data beside the project does not exist")
    raise DataError(
        f"no shared data folder ({where}): set AE_JAX_DATA_DIR to the folder holding "
        f"{parts[0]}/")
  path = root.joinpath(*parts)
  if not path.exists():
    raise DataError(f"{path} does not exist (shared data folder: {root})")
  return path


def _no_split(name: str, split: str | None):
  if split is not None:
    raise ConfigError(f"{name} has no predefined splits (got split={split!r}); use "
                      "ae_jax.data.train_val_split to hold out examples")


def _no_arg(name: str, arg: str | None):
  if arg is not None:
    raise ConfigError(f"dataset {name!r} takes no ':' argument, got {name}:{arg}")


def _named(base: str, split: str | None) -> str:
  return base if split is None else f"{base}:{split}"


@DATASETS.register("digits")
def _load_digits(arg: str | None, split: str | None) -> ArrayData:
  """sklearn's 8x8 digits, (1797, 8, 8, 1) in [0, 1]; embedded, no network."""
  _no_arg("digits", arg)
  _no_split("digits", split)
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  x = (bunch.images / 16.0)[..., None]
  return make_array_data(x, bunch.target, "digits", "image")


@DATASETS.register("mnist_t10k")
def _load_mnist_t10k(arg: str | None, split: str | None) -> ArrayData:
  """The 10k MNIST test images, (N, 28, 28, 1) in [0, 1], with labels.

  split=None gives all 10,000; 'train' the first 8,000 and 'test' the last 2,000
  of `np.random.RandomState(0).permutation(10000)` (a fixed split, same everywhere).
  """
  _no_arg("mnist_t10k", arg)
  images = _shared_file("mnist_t10k", "t10k-images-idx3-ubyte.gz")
  data = dataclasses.replace(load_idx(images), name="mnist_t10k")
  if split is None:
    return data
  order = np.random.RandomState(0).permutation(len(data))
  parts = {"train": order[:MNIST_T10K_TRAIN_SIZE], "test": order[MNIST_T10K_TRAIN_SIZE:]}
  if split not in parts:
    raise ConfigError(f"mnist_t10k split must be None, 'train' or 'test', got {split!r}")
  return dataclasses.replace(data.take(parts[split]), name=_named("mnist_t10k", split))


@DATASETS.register("ecg5000")
def _load_ecg5000(arg: str | None, split: str | None) -> ArrayData:
  """ECG5000 heartbeats as (N, 140, 1) sequences with labels 1 (normal) to 5.

  split: 'train' (319), 'validation' (80), 'test' (4,499), 'train+validation',
  or None for all three in that order.
  """
  _no_arg("ecg5000", arg)
  names = _split_names("ecg5000", split, ECG5000_SPLITS, ECG5000_SPLITS)
  tables = []
  for part in names:
    path = _shared_file("ecg5000", f"ECG5000_{part.upper()}.npy")
    table = _load_npy_array(path)
    if table.ndim != 2 or table.shape[1] < 2:
      raise DataError(f"{path}: expected rows of label then samples, got shape {table.shape}")
    tables.append(table)
  table = np.concatenate(tables)
  return make_array_data(table[:, 1:, None], table[:, 0], _named("ecg5000", split),
                         "sequence")


def _split_names(source: str, split: str | None, valid: tuple, default: tuple) -> tuple:
  """The parts of a '+'-joined split of `source` (`default` for None), each in `valid`."""
  names = default if split is None else tuple(split.split("+"))
  if any(s not in valid for s in names):
    raise ConfigError(f"{source} split must be None or a '+'-joined subset of {valid}, "
                      f"got {split!r}")
  return names


@DATASETS.register("binarized_mnist")
def _load_binarized_mnist(arg: str | None, split: str | None) -> ArrayData:
  """Larochelle and Murray's statically binarized MNIST as (N, 28, 28, 1) images in {0, 1}.

  split: 'train' (50,000), 'valid' (10,000), 'test' (10,000), a '+'-joined subset such
  as 'train+valid', or None for the training split. No labels. The same data as
  `tfds:binarized_mnist` (whose 'validation' split is called 'valid' here).
  """
  _no_arg("binarized_mnist", arg)
  names = _split_names("binarized_mnist", split, BINARIZED_MNIST_SPLITS, ("train",))
  parts = []
  for part in names:
    path = _shared_file("binarized_mnist", f"{part}.npz")
    x = load_npz(path).x
    if x.ndim != 2 or x.shape[1] != 784 or not np.all((x == 0) | (x == 1)):
      raise DataError(f"{path}: expected X of shape (N, 784) with values in {{0, 1}}, got "
                      f"shape {x.shape}")
    parts.append(x.reshape(-1, 28, 28, 1))
  return make_array_data(np.concatenate(parts), None, _named("binarized_mnist", split or "train"),
                         "image")


@DATASETS.register("adbench")
def _load_adbench(arg: str | None, split: str | None) -> ArrayData:
  """An ADBench tabular set, e.g. `adbench:18_Ionosphere`: (N, D) vectors, y=1 anomaly."""
  if not arg:
    raise ConfigError("give the ADBench set as adbench:<name>, e.g. adbench:18_Ionosphere")
  _no_split(f"adbench:{arg}", split)
  stem = arg[:-4] if arg.endswith(".npz") else arg
  root = data_dir()
  if root is not None and not (root / "adbench" / f"{stem}.npz").exists():
    have = sorted(p.stem for p in (root / "adbench").glob("*.npz"))
    raise DataError(f"no ADBench set {stem!r} in {root / 'adbench'}; "
                    f"available: {', '.join(have) or 'none'}")
  data = load_npz(_shared_file("adbench", f"{stem}.npz"))
  return dataclasses.replace(data, name=f"adbench:{stem}", kind="vector")


@DATASETS.register("tfds")
def _load_tfds(arg: str | None, split: str | None) -> ArrayData:
  """A TFDS image dataset read through `tfds.data_source` (no TensorFlow needed).

  The spec is `tfds:<name>[:split]`; the split defaults to 'train'. TFDS looks in
  `TFDS_DATA_DIR` (default ~/tensorflow_datasets); nothing is downloaded here.
  """
  if not arg:
    raise ConfigError("give the TFDS dataset as tfds:<name>[:split], e.g. tfds:mnist")
  name, _, spec_split = arg.partition(":")
  if spec_split and split is not None and spec_split != split:
    raise ConfigError(f"tfds:{arg} names split {spec_split!r} but split={split!r} was passed")
  split = spec_split or split or "train"
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds_dir = os.environ.get("TFDS_DATA_DIR") or None
  try:
    source = tfds.data_source(name, split=split, data_dir=tfds_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise _tfds_error(tfds, name, split, tfds_dir, e) from None
  records = [source[i] for i in range(len(source))]
  if not records:
    raise DataError(f"tfds:{name} split {split!r} is empty")
  if "image" not in records[0]:
    raise DataError(f"tfds:{name} has features {sorted(records[0])}; only datasets "
                    "with an 'image' feature are supported")
  x = np.stack([np.asarray(r["image"]) for r in records])
  if x.ndim == 3:
    x = x[..., None]
  x = x.astype(np.float32) if name in TFDS_BINARY else x.astype(np.float32) / 255.0
  y = np.array([r["label"] for r in records]) if "label" in records[0] else None
  return make_array_data(x, y, f"tfds:{name}:{split}", "image")


def _tfds_error(tfds, name: str, split: str, tfds_dir: str | None,
                cause: Exception) -> DataError:
  """Explains why a TFDS dataset cannot be read, checking only local files."""
  try:
    builder = tfds.builder(name, data_dir=tfds_dir)
  except Exception as e:  # pylint: disable=broad-except
    return DataError(f"tfds:{name}: {str(e).splitlines()[0]}")
  if not builder.is_prepared():
    return DataError(
        f"tfds:{name} is not prepared in {builder.data_dir}. Preparing it needs network "
        "and TensorFlow: pip install \"ae_jax[tf]\" then python -c \"import "
        f"tensorflow_datasets as tfds; tfds.builder('{name}').download_and_prepare()\" "
        "(set TFDS_DATA_DIR to use another folder); or use file inputs "
        "(.npy, .npz, .csv, IDX, UCR .tsv) or the shared data (mnist_t10k, ecg5000).")
  return DataError(
      f"tfds:{name} split {split!r} in {builder.data_dir} cannot be read with random "
      f"access ({type(cause).__name__}: {str(cause).splitlines()[0]}); prepare it with "
      "download_and_prepare(file_format='array_record')")


FILE_SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".idx", "-ubyte")


def _is_file_spec(spec: str) -> bool:
  stripped = spec[:-3] if spec.endswith(".gz") else spec
  return stripped.endswith(FILE_SUFFIXES) or pathlib.Path(spec).exists()


def load(spec: str, split: str | None = None) -> ArrayData:
  """Loads a dataset by name or path into memory; see the module docstring."""
  head, _, arg = spec.partition(":")
  if head in DATASETS:
    return DATASETS.get(head)(arg or None, split)
  if _is_file_spec(spec):
    _no_split(spec, split)
    return load_file(spec)
  raise ConfigError(
      f"unknown dataset {spec!r}; valid dataset names are: {', '.join(DATASETS.names())} "
      "(as adbench:<name> and tfds:<name>[:split]), or a path to a "
      f"{', '.join(FILE_SUFFIXES)} file")


def available() -> list[str]:
  """Specs that load here now: named sources whose files exist and `adbench:*` sets."""
  names = ["digits"]
  root = data_dir()
  if root is not None:
    if (root / "mnist_t10k" / "t10k-images-idx3-ubyte.gz").exists():
      names.append("mnist_t10k")
    if all((root / "ecg5000" / f"ECG5000_{s.upper()}.npy").exists()
           for s in ECG5000_SPLITS):
      names.append("ecg5000")
    if all((root / "binarized_mnist" / f"{s}.npz").exists() for s in BINARIZED_MNIST_SPLITS):
      names.append("binarized_mnist")
    names += sorted(f"adbench:{p.stem}" for p in (root / "adbench").glob("*.npz"))
  return names


def load_file(path) -> ArrayData:
  """Loads one data file, choosing the reader by the file name."""
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path} does not exist")
  name = path.name[:-3] if path.name.endswith(".gz") else path.name
  if name.endswith(".npy"):
    return make_array_data(_load_npy_array(path), None, path.name)
  if name.endswith(".npz"):
    return load_npz(path)
  if name.endswith(".csv"):
    return load_csv(path)
  if name.endswith((".tsv", ".txt")):
    return load_ucr(path)
  if name.endswith(("-ubyte", ".idx")):
    return load_idx(path)
  raise DataError(f"{path}: unknown file type; expected one of {', '.join(FILE_SUFFIXES)}")


def _load_npy_array(path: pathlib.Path) -> np.ndarray:
  try:
    with open(path, "rb") as f:
      return np.load(f, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise DataError(f"{path} is not a readable .npy array: {e}") from None


def load_npz(path) -> ArrayData:
  """Reads an .npz with features under `X` or `x` and optional labels under `y`."""
  path = pathlib.Path(path)
  try:
    with np.load(path, allow_pickle=False) as archive:
      keys = list(archive.keys())
      key = "X" if "X" in keys else "x" if "x" in keys else None
      if key is None:
        raise DataError(f"{path} has no array named 'X' or 'x' (it holds: "
                        f"{', '.join(keys) or 'nothing'})")
      x = archive[key]
      y = archive["y"] if "y" in keys else None
  except DataError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f"{path} is not a readable .npz archive: {e}") from None
  return make_array_data(x, y, path.name)


def load_csv(path) -> ArrayData:
  """Reads a numeric CSV; a column named `y` or `label` holds labels, the rest features.

  A first row that is not numeric is taken as the header.
  """
  path = pathlib.Path(path)
  lines = _read_text(path).splitlines()
  lines = [line for line in lines if line.strip()]
  if not lines:
    raise DataError(f"{path} is empty")
  header = [c.strip().strip('"') for c in lines[0].split(",")]
  if all(_is_number(c) for c in header):
    header, rows = None, lines
  else:
    rows = lines[1:]
  table = _parse_rows(path, rows, lambda line: line.split(","),
                      first_line=1 if header is None else 2)
  y = None
  if header is not None:
    if len(header) != table.shape[1]:
      raise DataError(f"{path}: header has {len(header)} columns but rows have "
                      f"{table.shape[1]}")
    label_cols = [i for i, c in enumerate(header) if c.lower() in ("y", "label")]
    if label_cols:
      y = table[:, label_cols[0]]
      table = np.delete(table, label_cols[0], axis=1)
  return make_array_data(table, y, path.name, "vector")


def load_ucr(path) -> ArrayData:
  """Reads a UCR-archive text file: one series a row, label first -> (N, T, 1)."""
  path = pathlib.Path(path)
  rows = [line for line in _read_text(path).splitlines() if line.strip()]
  if not rows:
    raise DataError(f"{path} is empty")
  table = _parse_rows(path, rows, lambda line: re.split(r"[,\s]+", line.strip()))
  if table.shape[1] < 2:
    raise DataError(f"{path}: each row needs a label and at least one sample")
  return make_array_data(table[:, 1:, None], table[:, 0], path.name, "sequence")


def _read_text(path: pathlib.Path) -> str:
  try:
    raw = _read_bytes(path)
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path} is not a UTF-8 text file ({e})") from None


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _parse_rows(path: pathlib.Path, rows: list[str], split_row, first_line: int = 1):
  """Parses text rows into a float64 table, naming the first bad row and cell."""
  values = []
  for n, line in enumerate(rows):
    cells = [c.strip().strip('"') for c in split_row(line)]
    try:
      values.append([float(c) for c in cells])
    except ValueError:
      bad = next(c for c in cells if not _is_number(c))
      raise DataError(f"{path}: line {n + first_line}: cannot parse {bad!r} as a number") \
          from None
    if len(values[-1]) != len(values[0]):
      raise DataError(f"{path}: line {n + first_line} has {len(values[-1])} values, "
                      f"the first row has {len(values[0])}")
  return np.array(values, dtype=np.float64)


def _read_bytes(path: pathlib.Path) -> bytes:
  try:
    if path.name.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    return path.read_bytes()
  except (gzip.BadGzipFile, EOFError, zlib.error) as e:
    raise DataError(f"{path} is not a valid gzip file (corrupt or truncated: {e})") \
        from None
  except OSError as e:
    raise DataError(f"cannot read {path}: {e}") from None


IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
              0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
  """Reads an IDX array (the MNIST file format), gzipped or not."""
  path = pathlib.Path(path)
  raw = _read_bytes(path)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
    raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise DataError(f"{path}: IDX header is truncated")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  dtype = np.dtype(IDX_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes of data) "
                    f"but the file holds {len(raw) - header} bytes; it is truncated or "
                    "corrupt")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def load_idx(path) -> ArrayData:
  """Reads IDX images (uint8 scaled to [0, 1]) and, if beside them, their labels.

  The labels file is found by replacing `images-idx3` with `labels-idx1` in the name.
  3-D image arrays (N, H, W) get a channel axis.
  """
  path = pathlib.Path(path)
  x = read_idx(path)
  if x.ndim < 2:
    raise DataError(f"{path}: IDX array of shape {x.shape} holds no examples of features")
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x
  kind = None
  if x.ndim == 3:
    x, kind = x[..., None], "image"
  y = None
  if "images-idx3" in path.name:
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if labels_path.exists():
      y = read_idx(labels_path)
      if y.shape != (x.shape[0],):
        raise DataError(f"{labels_path}: {y.shape} labels for {x.shape[0]} images in {path}")
  return make_array_data(x, y, path.name, kind)
