"""Tests of ae_jax.data: loaders on tiny files, preprocessing and input pipelines."""

import gzip
import struct
import time

import numpy as np
import pytest

from ae_jax.data import (ArrayData, Scaler, available, check_finite, data_dir,
                         eval_batches, load, make_train_loader, prefetch,
                         shard_for_devices, sliding_windows, train_val_split)
from ae_jax.data.pipeline import eval_batches as eval_batches_direct
from ae_jax.errors import ConfigError, DataError


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(payload)
  return payload


# Sources: files written here.


def test_npz_with_labels(tmp_path):
  x = np.arange(12, dtype=np.float64).reshape(4, 3)
  np.savez(tmp_path / "set.npz", X=x, y=np.array([0, 1, 0, 1], np.int32))
  data = load(str(tmp_path / "set.npz"))
  assert data.kind == "vector" and data.x.dtype == np.float32 and data.y.dtype == np.int64
  np.testing.assert_array_equal(data.x, x)
  np.testing.assert_array_equal(data.y, [0, 1, 0, 1])
  assert len(data) == 4


def test_npz_lowercase_x_without_labels(tmp_path):
  np.savez(tmp_path / "seq.npz", x=np.zeros((2, 5, 3)))
  data = load(str(tmp_path / "seq.npz"))
  assert data.kind == "sequence" and data.x.shape == (2, 5, 3) and data.y is None


def test_npz_without_features_names_the_keys(tmp_path):
  np.savez(tmp_path / "bad.npz", features=np.zeros((2, 2)))
  with pytest.raises(DataError, match=r"bad\.npz has no array named 'X' or 'x'.*features"):
    load(str(tmp_path / "bad.npz"))


def test_corrupt_npz_and_npy(tmp_path):
  (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
  with pytest.raises(DataError, match=r"junk\.npz is not a readable \.npz"):
    load(str(tmp_path / "junk.npz"))
  np.save(tmp_path / "cut.npy", np.zeros((10, 10)))
  raw = (tmp_path / "cut.npy").read_bytes()
  (tmp_path / "cut.npy").write_bytes(raw[:len(raw) // 2])
  with pytest.raises(DataError, match=r"cut\.npy is not a readable \.npy"):
    load(str(tmp_path / "cut.npy"))


def test_npy_kinds(tmp_path):
  for shape, kind in [((3, 4), "vector"), ((3, 4, 2), "sequence"), ((3, 4, 4, 1), "image")]:
    np.save(tmp_path / "a.npy", np.ones(shape))
    data = load(str(tmp_path / "a.npy"))
    assert data.kind == kind and data.x.shape == shape
  np.save(tmp_path / "flat.npy", np.ones(7))
  with pytest.raises(DataError, match="sliding_windows"):
    load(str(tmp_path / "flat.npy"))


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    load(str(tmp_path / "nothing.npz"))


def test_csv_with_header_and_label_column(tmp_path):
  (tmp_path / "t.csv").write_text("a,label,b\n1.5,0,2\n3,1,4\n")
  data = load(str(tmp_path / "t.csv"))
  np.testing.assert_array_equal(data.x, [[1.5, 2], [3, 4]])
  np.testing.assert_array_equal(data.y, [0, 1])


def test_csv_without_header_is_all_features(tmp_path):
  (tmp_path / "t.csv").write_text("1,2,3\n4,5,6\n")
  data = load(str(tmp_path / "t.csv"))
  assert data.x.shape == (2, 3) and data.y is None and data.kind == "vector"


def test_unparsable_csv_names_line_and_value(tmp_path):
  (tmp_path / "t.csv").write_text("a,b\n1,2\n3,abc\n")
  with pytest.raises(DataError, match=r"t\.csv: line 3: cannot parse 'abc'"):
    load(str(tmp_path / "t.csv"))
  (tmp_path / "ragged.csv").write_text("1,2\n3\n")
  with pytest.raises(DataError, match="line 2 has 1 values"):
    load(str(tmp_path / "ragged.csv"))


def test_idx_gz_images_with_labels(tmp_path):
  images = np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)
  write_idx(tmp_path / "tiny-images-idx3-ubyte.gz", images)
  write_idx(tmp_path / "tiny-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5]))
  data = load(str(tmp_path / "tiny-images-idx3-ubyte.gz"))
  assert data.kind == "image" and data.x.shape == (5, 4, 3, 1)
  np.testing.assert_allclose(data.x[..., 0], images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(data.y, [3, 1, 4, 1, 5])


def test_idx_plain_without_labels(tmp_path):
  write_idx(tmp_path / "solo-images-idx3-ubyte", np.zeros((2, 3, 3)))
  data = load(str(tmp_path / "solo-images-idx3-ubyte"))
  assert data.x.shape == (2, 3, 3, 1) and data.y is None


def test_truncated_idx_and_bad_gzip(tmp_path):
  payload = write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 3, 3)))
  (tmp_path / "x-images-idx3-ubyte").write_bytes(payload[:-5])
  with pytest.raises(DataError, match=r"shape \(4, 3, 3\).*truncated"):
    load(str(tmp_path / "x-images-idx3-ubyte"))
  (tmp_path / "y-images-idx3-ubyte.gz").write_bytes(payload)
  with pytest.raises(DataError, match=r"y-images-idx3-ubyte\.gz is not a valid gzip"):
    load(str(tmp_path / "y-images-idx3-ubyte.gz"))
  compressed = gzip.compress(payload)
  (tmp_path / "z-images-idx3-ubyte.gz").write_bytes(compressed[:len(compressed) // 2])
  with pytest.raises(DataError, match="corrupt or truncated"):
    load(str(tmp_path / "z-images-idx3-ubyte.gz"))
  (tmp_path / "w.idx").write_bytes(b"\x12\x34\x56\x78")
  with pytest.raises(DataError, match="not an IDX file"):
    load(str(tmp_path / "w.idx"))


def test_ucr_tsv_and_comma_txt(tmp_path):
  (tmp_path / "u.tsv").write_text("1\t0.5\t0.25\t0\n2\t1\t2\t3\n")
  data = load(str(tmp_path / "u.tsv"))
  assert data.kind == "sequence" and data.x.shape == (2, 3, 1)
  np.testing.assert_array_equal(data.y, [1, 2])
  np.testing.assert_allclose(data.x[1, :, 0], [1, 2, 3])
  (tmp_path / "u.txt").write_text("  1.0e+00, 4, 5\n-1, 6, 7\n")
  np.testing.assert_array_equal(load(str(tmp_path / "u.txt")).y, [1, -1])


def test_digits():
  data = load("digits")
  assert data.x.shape == (1797, 8, 8, 1) and data.kind == "image"
  assert data.x.dtype == np.float32 and 0.0 <= data.x.min() and data.x.max() <= 1.0
  assert data.y.shape == (1797,) and set(np.unique(data.y)) == set(range(10))
  assert "digits" in available()
  with pytest.raises(ConfigError, match="no predefined splits"):
    load("digits", split="train")


def test_unknown_name_lists_valid_names():
  with pytest.raises(ConfigError, match="digits.*ecg5000.*mnist_t10k"):
    load("imagenet_in_my_dreams")


def test_take_and_filter_labels():
  data = ArrayData(x=np.arange(6, dtype=np.float32).reshape(3, 2),
                   y=np.array([1, 2, 1]), name="t", kind="vector")
  np.testing.assert_array_equal(data.take([2, 0]).x, [[4, 5], [0, 1]])
  normal = data.filter_labels([1])
  assert len(normal) == 2 and set(normal.y) == {1}
  with pytest.raises(DataError, match="no labels"):
    ArrayData(x=data.x, y=None, name="t", kind="vector").filter_labels([1])


# Sources: shared real data.


def test_missing_data_folder_means_no_shared_data(tmp_path, monkeypatch):
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path / "not_there"))
  assert data_dir() is None
  assert "mnist_t10k" not in available() and "ecg5000" not in available()
  with pytest.raises(DataError, match=r"AE_JAX_DATA_DIR=.*not_there is not a folder"):
    load("mnist_t10k")
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))  # an empty folder
  assert data_dir() == tmp_path
  with pytest.raises(DataError, match=r"mnist_t10k.*does not exist"):
    load("mnist_t10k")


@pytest.mark.shared_data("mnist_t10k")
def test_mnist_t10k_fixed_split():
  full = load("mnist_t10k")
  assert full.x.shape == (10000, 28, 28, 1) and full.y.shape == (10000,)
  assert full.x.dtype == np.float32 and full.x.max() == 1.0
  train, test = load("mnist_t10k", "train"), load("mnist_t10k", "test")
  assert len(train) == 8000 and len(test) == 2000
  order = np.random.RandomState(0).permutation(10000)
  np.testing.assert_array_equal(test.y, full.y[order[8000:]])


@pytest.mark.shared_data("ecg5000")
def test_ecg5000_splits():
  sizes = {s: len(load("ecg5000", s)) for s in ("train", "validation", "test")}
  assert sizes == {"train": 319, "validation": 80, "test": 4499}
  both = load("ecg5000", "train+validation")
  assert both.x.shape == (399, 140, 1) and both.kind == "sequence"
  assert set(np.unique(both.y)) <= {1, 2, 3, 4, 5}
  assert len(load("ecg5000")) == 319 + 80 + 4499
  with pytest.raises(ConfigError, match="ecg5000 split"):
    load("ecg5000", "dev")


@pytest.mark.shared_data("adbench")
def test_adbench_ionosphere():
  data = load("adbench:18_Ionosphere")
  assert data.x.shape == (351, 32) and data.kind == "vector"
  assert set(np.unique(data.y)) == {0, 1}
  assert len(load("adbench:18_Ionosphere.npz")) == 351
  with pytest.raises(DataError, match="18_Ionosphere"):
    load("adbench:no_such_set")


# Sources: TFDS.


def test_tfds_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    data = load("tfds:mnist")
    test = load("tfds:mnist:test")
  assert data.x.shape == (20, 28, 28, 1) and data.kind == "image"
  assert data.x.dtype == np.float32 and 0.0 <= data.x.min() and data.x.max() <= 1.0
  assert data.y.shape == (20,) and data.y.dtype == np.int64
  assert test.name == "tfds:mnist:test"


def test_tfds_not_prepared_fails_fast(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  start = time.monotonic()
  with pytest.raises(DataError, match=r"not prepared in .*download_and_prepare.*file inputs"):
    load("tfds:mnist")
  assert time.monotonic() - start < 20


# Preprocessing.


def test_scaler_fitted_on_train_only():
  rng = np.random.default_rng(0)
  train = rng.normal(2.0, 3.0, size=(50, 4)).astype(np.float32)
  train[:, 3] = 7.0
  test = rng.normal(-5.0, 1.0, size=(10, 4)).astype(np.float32)
  standard = Scaler("standard").fit(train)
  np.testing.assert_allclose(standard.offset, train.mean(0), rtol=1e-5)
  np.testing.assert_allclose(standard.scale[:3], train.std(0)[:3], rtol=1e-5)
  assert standard.scale[3] == 1.0
  scaled = standard.transform(train)
  assert np.all(np.isfinite(scaled)) and np.allclose(scaled[:, 3], 0.0)
  np.testing.assert_allclose(standard.inverse_transform(standard.transform(test)), test,
                             rtol=1e-5, atol=1e-5)
  minmax = Scaler("minmax").fit(train)
  np.testing.assert_allclose(minmax.transform(train)[:, :3].min(0), 0.0, atol=1e-6)
  np.testing.assert_allclose(minmax.transform(train)[:, :3].max(0), 1.0, atol=1e-6)
  state = minmax.to_state()
  assert isinstance(state["method"], str) and isinstance(state["offset"], np.ndarray)
  restored = Scaler.from_state(state)
  np.testing.assert_array_equal(restored.transform(test), minmax.transform(test))
  np.testing.assert_array_equal(Scaler("none").fit(train).transform(test), test)


def test_scaler_errors():
  with pytest.raises(ConfigError, match="minmax"):
    Scaler("robust")
  with pytest.raises(DataError, match="not fitted"):
    Scaler("standard").transform(np.zeros((2, 3)))
  with pytest.raises(DataError, match="fitted on examples of shape"):
    Scaler("standard").fit(np.ones((2, 3))).transform(np.zeros((2, 4)))


def test_check_finite_policies():
  x = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.inf], [5.0, 6.0]], np.float32)
  y = np.arange(4)
  with pytest.raises(DataError, match=r"NaN/inf in the val split: first bad example at "
                     r"index 1 .*data.nonfinite='drop' or 'impute'"):
    check_finite(x, "val")
  dropped_x, dropped_y = check_finite(x, "train", "drop", y)
  np.testing.assert_array_equal(dropped_x, [[1, 2], [5, 6]])
  np.testing.assert_array_equal(dropped_y, [0, 3])
  imputed, same_y = check_finite(x, "train", "impute", y)
  np.testing.assert_allclose(imputed, [[1, 2], [3, 4], [3, 4], [5, 6]])
  assert same_y is y
  clean = np.ones((3, 2))
  assert check_finite(clean, "test")[0] is clean
  with pytest.raises(ConfigError):
    check_finite(x, "train", "ignore")


def test_sliding_windows():
  series = np.arange(10, dtype=np.float32)
  windows = sliding_windows(series, length=4, stride=3)
  assert windows.shape == (3, 4, 1)
  np.testing.assert_array_equal(windows[:, :, 0], [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
  two = sliding_windows(np.stack([series, -series], 1), length=5, stride=5)
  assert two.shape == (2, 5, 2)
  np.testing.assert_array_equal(two[1, :, 1], -series[5:])
  normalized = sliding_windows(np.concatenate([np.full(4, 3.0), series]), 4, 4,
                               normalize=True)
  np.testing.assert_array_equal(normalized[0], 0.0)
  np.testing.assert_allclose(normalized[1:].mean(1), 0.0, atol=1e-6)
  np.testing.assert_allclose(normalized[1:].std(1), 1.0, rtol=1e-5)
  with pytest.raises(DataError, match="shorter than one window"):
    sliding_windows(series, 11, 1)


def test_train_val_split_is_deterministic():
  data = ArrayData(x=np.arange(40, dtype=np.float32).reshape(20, 2), y=np.arange(20),
                   name="t", kind="vector")
  train, val = train_val_split(data, 0.25, seed=3)
  assert len(train) == 15 and len(val) == 5
  assert sorted(np.concatenate([train.y, val.y]).tolist()) == list(range(20))
  again_train, again_val = train_val_split(data, 0.25, seed=3)
  np.testing.assert_array_equal(val.y, again_val.y)
  assert not np.array_equal(val.y, train_val_split(data, 0.25, seed=4)[1].y)
  with pytest.raises(ConfigError):
    train_val_split(data, 1.0, seed=0)


# Pipelines.


def small_data(n=50):
  return ArrayData(x=np.arange(n * 3, dtype=np.float32).reshape(n, 3),
                   y=np.arange(n, dtype=np.int64), name="small", kind="vector")


def test_train_loader_deterministic_by_seed_and_drops_remainder():
  data = small_data()
  run = lambda seed: [b["y"] for b in make_train_loader(data, batch_size=8, seed=seed,
                                                        num_epochs=1)]
  first, again, other = run(0), run(0), run(1)
  assert len(first) == 50 // 8 and all(b.shape == (8,) for b in first)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))
  seen = np.concatenate(first)
  assert len(np.unique(seen)) == seen.size
  batch = next(iter(make_train_loader(data, batch_size=8, seed=0, num_epochs=1)))
  np.testing.assert_array_equal(batch["x"][:, 0], batch["y"] * 3)
  unlabeled = ArrayData(x=data.x, y=None, name="u", kind="vector")
  assert set(next(iter(make_train_loader(unlabeled, batch_size=4, seed=0)))) == {"x"}


def test_train_loader_state_round_trip():
  loader = make_train_loader(small_data(), batch_size=4, seed=7, num_epochs=2,
                             shard_by_process=False)
  it = iter(loader)
  for _ in range(5):
    next(it)
  state = it.get_state()
  assert isinstance(state, bytes)
  expected = [next(it)["y"] for _ in range(10)]
  stored = np.frombuffer(state, np.uint8)
  resumed = iter(loader)
  resumed.set_state(stored.tobytes())
  assert all(np.array_equal(a, next(resumed)["y"]) for a in expected)
  from_text = iter(loader)
  from_text.set_state(state.decode().encode())
  np.testing.assert_array_equal(next(from_text)["y"], expected[0])


def test_eval_batches_cover_everything_once():
  data = small_data(10)
  batches = list(eval_batches(data, 4))
  assert [b["x"].shape for b in batches] == [(4, 3)] * 3
  mask = np.concatenate([b["mask"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
  np.testing.assert_array_equal(index, list(range(10)) + [-1, -1])
  assert mask.dtype == np.float32 and index.dtype == np.int64
  np.testing.assert_array_equal(np.concatenate([b["y"] for b in batches])[:10], data.y)
  np.testing.assert_array_equal(batches[-1]["x"][2:], 0.0)
  plain = list(eval_batches_direct(np.ones((8, 2)), 4))
  assert len(plain) == 2 and "y" not in plain[0] and plain[1]["mask"].sum() == 4


def test_shard_for_devices():
  batch = {"x": np.zeros((8, 5, 2)), "y": np.zeros(8), "nested": {"m": np.ones(8)}}
  sharded = shard_for_devices(batch, 4)
  assert sharded["x"].shape == (4, 2, 5, 2) and sharded["y"].shape == (4, 2)
  assert sharded["nested"]["m"].shape == (4, 2)
  with pytest.raises(DataError, match="batch_size must be a multiple of the device count"):
    shard_for_devices(batch, 3)


def test_prefetch_keeps_order_and_raises():
  assert list(prefetch(iter(range(20)), size=3)) == list(range(20))

  def failing():
    yield 1
    yield 2
    raise RuntimeError("source broke")

  out = prefetch(failing())
  assert next(out) == 1 and next(out) == 2
  with pytest.raises(RuntimeError, match="source broke"):
    next(out)
