"""examples/autoencoders_intro.ipynb: stored without outputs, and runs top to bottom."""

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "autoencoders_intro.ipynb"


# The notebook's own training budget takes minutes; the test runs every cell with a quarter
# of the epochs (same code paths, same outputs, shorter training).
SHORTER = {'EPOCHS = 8 if DATASET == "mnist_t10k" else 40':
           'EPOCHS = 2 if DATASET == "mnist_t10k" else 10'}


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def _shorten(nb):
  """Applies SHORTER to the cells; each line must be found once."""
  for old, new in SHORTER.items():
    hits = [c for c in _code_cells(nb) if old in c.source]
    assert len(hits) == 1, f"the notebook no longer has the line {old!r}: update SHORTER"
    hits[0].source = hits[0].source.replace(old, new)


def test_notebook_is_stored_stripped_with_install_cell_and_colab_note():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert NOTEBOOK.stat().st_size < 50_000
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
  colab = re.search(r"colab\.research\.google\.com/github/OWNER/REPO/blob/main/(\S+?\.ipynb)",
                    nb.cells[0].source)
  assert colab and colab.group(1) == NOTEBOOK.relative_to(ROOT).as_posix()
  first = _code_cells(nb)[0].source
  assert "pip" in first and "ae_jax" in first and "AE_JAX_SOURCE" in first
  assert "github.com/ae-jax" not in nbformat.writes(nb)  # no guessed public address


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
  # The kernel's many small programs take longer to compile than to run (as in the
  # `fewer_optimizations` fixture of conftest.py).
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  _shorten(nb)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  cells = _code_cells(nb)
  for cell in cells:
    assert not [o for o in cell.outputs if o.output_type == "error"], cell.source[:60]
  plotting = [c for c in cells if re.search(r"^plots\.\w+\(", c.source, re.M)]
  assert len(plotting) >= 10
  for cell in plotting:
    assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:60]
  text = "".join(o.get("text", "") for c in cells for o in c.outputs)
  for expected in ("test reconstruction MSE", "PCA MSE", "dead latents", "PSNR", "ELBO",
                   "ROC-AUC", "linear-probe accuracy", "bytes per image", "in the holes",
                   "the whole notebook ran in"):
    assert expected in text
  assert not re.search(r"\bnan\b", text)
