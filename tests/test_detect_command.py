"""End-to-end tests of `ae-jax detect` on small CSV / .npz files."""

import numpy as np
import pytest

from ae_jax import cli
from ae_jax.anomaly import command

COLUMNS = ["a", "b", "c", "d"]


def _rows(rng, n, outliers=0):
  """(x (n + outliers, 4), y): a correlated normal cloud and far-off planted outliers."""
  z = rng.normal(size=(n, 2))
  x = np.concatenate([z, z @ np.array([[1.0, 0.5], [-0.5, 1.0]])], axis=1)
  far = rng.uniform(-6, 6, size=(outliers, 4))
  far[:, 2:] = rng.choice([-6.0, 6.0], size=(outliers, 2))
  y = np.r_[np.zeros(n, int), np.ones(outliers, int)]
  return np.concatenate([x, far]), y


def _write_csv(path, x, names, y=None):
  header = ",".join(names + (["label"] if y is not None else []))
  lines = [header]
  for i, row in enumerate(x):
    cells = [f"{v:.6f}" for v in row] + ([str(y[i])] if y is not None else [])
    lines.append(",".join(cells))
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("detect")
  rng = np.random.default_rng(0)
  x_fit, _ = _rows(rng, 300)
  x_new, y_new = _rows(rng, 100, outliers=10)
  return {"dir": tmp, "fit": _write_csv(tmp / "normal.csv", x_fit, COLUMNS),
          "new": _write_csv(tmp / "new.csv", x_new, COLUMNS, y_new), "y": y_new}


FAST = ["--ensemble", "1", "--max-steps", "150"]


@pytest.fixture(scope="module")
def fitted(files):
  out = files["dir"] / "scores.csv"
  save = files["dir"] / "det"
  code = cli.main(["detect", "--fit", str(files["fit"]), "--score", str(files["new"]),
                   "--out", str(out), "--save", str(save), "--labels", "label", *FAST])
  assert code == 0
  return out, save


def test_fit_score_writes_one_score_and_flag_per_row(files, fitted):
  out, save = fitted
  lines = out.read_text().splitlines()
  assert lines[0] == "score,flag"
  got = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
  assert got.shape == (110, 2)
  assert set(np.unique(got[:, 1])) <= {0.0, 1.0}
  from sklearn.metrics import roc_auc_score
  assert roc_auc_score(files["y"], got[:, 0]) > 0.95
  assert sorted(p.name for p in save.iterdir()) == ["arrays.npz", "detector.json"]


def test_load_gives_the_same_scores_and_npz_output(files, fitted, capsys):
  out, save = fitted
  first = np.loadtxt(out, delimiter=",", skiprows=1)
  npz = files["dir"] / "again.npz"
  assert cli.main(["detect", "--load", str(save), "--score", str(files["new"]), "--out",
                   str(npz), "--labels", "label"]) == 0
  printed = capsys.readouterr().out
  assert "ROC-AUC" in printed and "PR-AUC" in printed and "confusion matrix" in printed
  with np.load(npz) as got:
    np.testing.assert_allclose(got["scores"], first[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(got["flags"], first[:, 1].astype(int))
    threshold = float(got["threshold"])
    np.testing.assert_array_equal(got["flags"], (got["scores"] > threshold).astype(int))
  assert f"{threshold:.6g}" in printed
  # Another rule on the loaded detector: max of the held-out scores flags fewer rows.
  assert cli.main(["detect", "--load", str(save), "--score", str(files["new"]), "--out",
                   str(npz), "--labels", "label", "--threshold", "max"]) == 0
  with np.load(npz) as got:
    assert got["flags"].sum() <= first[:, 1].sum()


def test_reordered_columns_are_aligned_by_name(files, fitted):
  _, save = fitted
  x = np.loadtxt(files["new"], delimiter=",", skiprows=1)[:, :4]
  shuffled = _write_csv(files["dir"] / "shuffled.csv", x[:, [2, 0, 3, 1]],
                        ["c", "a", "d", "b"])
  out = files["dir"] / "shuffled_scores.npy"
  assert cli.main(["detect", "--load", str(save), "--score", str(shuffled), "--out",
                   str(out)]) == 0
  ref = np.loadtxt(fitted[0], delimiter=",", skiprows=1)
  np.testing.assert_allclose(np.load(out)[:, 0], ref[:, 0], rtol=1e-5)


def _fails(capsys, argv, *needles):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  for needle in needles:
    assert needle in err, err


def test_bad_input_gets_a_clear_error_and_nothing_is_written(files, fitted, capsys):
  _, save = fitted
  tmp = files["dir"]
  before = sorted(p.name for p in tmp.iterdir())
  out = tmp / "never.csv"
  other = _write_csv(tmp / "other.csv", np.zeros((3, 4)), ["a", "b", "c", "e"])
  _fails(capsys, ["detect", "--load", str(save), "--score", str(other), "--out", str(out)],
         "other.csv", "missing ['d']", "unexpected ['e']")
  nan = tmp / "nan.csv"
  nan.write_text("a,b,c,d\n1,2,3,4\n1,,3,4\n")
  _fails(capsys, ["detect", "--load", str(save), "--score", str(nan), "--out", str(out)],
         "nan.csv, line 3, column 'b'", "missing")
  text = tmp / "text.csv"
  text.write_text("a,b,c,d\n1,2,x3,4\n")
  _fails(capsys, ["detect", "--load", str(save), "--score", str(text), "--out", str(out)],
         "line 2, column 'c'", "'x3' is not a number")
  empty = tmp / "empty.csv"
  empty.write_text("")
  _fails(capsys, ["detect", "--fit", str(empty), "--out", str(out)], "empty.csv", "empty")
  ragged = tmp / "ragged.csv"
  ragged.write_text("a,b,c,d\n1,2,3,4\n1,2,3\n")
  _fails(capsys, ["detect", "--fit", str(ragged), "--out", str(out)],
         "ragged.csv, line 3: 3 fields, expected 4")
  _fails(capsys, ["detect", "--fit", str(files["fit"]), "--score", str(other), "--out",
                  str(out), *FAST], "columns differ", "missing ['d']")
  _fails(capsys, ["detect", "--fit", str(files["fit"]), "--out", str(tmp / "x.txt")],
         ".csv, .npy or .npz")
  _fails(capsys, ["detect", "--fit", str(files["fit"]), "--save", str(save), "--out", str(out)],
         "not an empty folder")
  _fails(capsys, ["detect", "--load", str(save), "--score", str(files["fit"]), "--out",
                  str(out), "--labels", "label"], "no label column or key 'label'")
  # a misspelt label column is named as such, not as a column the fit never saw
  _fails(capsys, ["detect", "--fit", str(files["fit"]), "--score", str(files["new"]),
                  "--out", str(out), "--labels", "lable", *FAST],
         "no label column or key 'lable'", "label")
  shaped = tmp / "shaped.npy"
  np.save(shaped, np.zeros((5, 3), np.float32))
  _fails(capsys, ["detect", "--load", str(save), "--score", str(shaped), "--out", str(out)],
         "shape (3,)", "(4,)")
  after = sorted(p.name for p in tmp.iterdir())
  created = {"other.csv", "nan.csv", "text.csv", "empty.csv", "ragged.csv", "shaped.npy"}
  assert sorted(set(after) - created) == before, "a failed run left files behind"


def test_write_scores_is_atomic_on_failure(tmp_path, monkeypatch):
  out = tmp_path / "s.npz"
  command.write_scores(out, np.array([1.0, 2.0]), np.array([0, 1]), 1.5)
  good = out.read_bytes()

  def broken(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", broken)
  with pytest.raises(OSError, match="disk full"):
    command.write_scores(out, np.array([3.0]), np.array([1]), 1.5)
  assert out.read_bytes() == good
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz"]


def test_npz_input_with_nan_names_the_row(tmp_path):
  x = np.ones((6, 3), np.float32)
  x[4, 1] = np.nan
  np.savez(tmp_path / "d.npz", X=x)
  with pytest.raises(Exception, match=r"d.npz: row 4 \(0-based\), feature 1"):
    command.read_table(tmp_path / "d.npz")


def test_contaminated_fits_the_adbench_configuration_on_rows_holding_anomalies(files, capsys):
  """--contaminated: the fit rows hold the anomalies (no clean set); the detector gets
  CONTAMINATED's arguments (saved with it), --scaling still overrides its scaling, and it
  still ranks the planted outliers first. With --load it is refused."""
  import json
  from ae_jax.anomaly.detector import CONTAMINATED
  rng = np.random.default_rng(1)
  x, y = _rows(rng, 300, outliers=15)
  mixed = _write_csv(files["dir"] / "mixed.csv", x, COLUMNS, y)
  out, save = files["dir"] / "mixed_scores.csv", files["dir"] / "det_mixed"
  assert cli.main(["detect", "--fit", str(mixed), "--labels", "label", "--contaminated",
                   "--out", str(out), "--save", str(save), *FAST]) == 0
  params = json.loads((save / "detector.json").read_text())["params"]
  assert {k: params[k] for k in CONTAMINATED} == CONTAMINATED
  scores = np.array([float(line.split(",")[0]) for line in out.read_text().splitlines()[1:]])
  from sklearn.metrics import roc_auc_score
  assert roc_auc_score(y, scores) > 0.95
  save2 = files["dir"] / "det_mixed_minmax"
  assert cli.main(["detect", "--fit", str(mixed), "--labels", "label", "--contaminated",
                   "--scaling", "minmax", "--out", str(files["dir"] / "mm.csv"),
                   "--save", str(save2), *FAST]) == 0
  params = json.loads((save2 / "detector.json").read_text())["params"]
  assert params["scaling"] == "minmax" and params["trim"] == 0.2
  _fails(capsys, ["detect", "--load", str(save), "--score", str(mixed), "--contaminated",
                  "--out", str(files["dir"] / "x.csv")], "--contaminated, --scaling and --members")
  assert not (files["dir"] / "x.csv").exists()
