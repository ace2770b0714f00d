"""experiments.gallery --smoke: every README figure is drawn, small, and its numbers kept."""

import json

import pytest

pytest.importorskip("sklearn")

from experiments import gallery  # noqa: E402


@pytest.mark.slow
def test_gallery_smoke_writes_every_figure_under_the_size_limit(tmp_path, fewer_optimizations):
  written = gallery.main(["--smoke", "--data", "digits", "--out", str(tmp_path)])
  names = {p.stem for p in written}
  expected = set(gallery.FIGURES) - ({"speed"} if gallery._speed_rows("mlp") is None else set())
  assert names == expected
  for path in written:
    assert 2_000 < path.stat().st_size <= gallery.MAX_BYTES
  record = json.loads((tmp_path / "gallery.json").read_text())
  assert record["data"] == "digits" and record["epochs"] == 1
  assert set(record["numbers"]["denoising_psnr_db"]) == {"noisy", "median 3x3", "autoencoder"}
  assert all(0 <= v <= 1 for panel in record["numbers"]["roc_auc"].values()
             for v in panel.values())


def test_gallery_rejects_unknown_figure_names(tmp_path):
  with pytest.raises(SystemExit):
    gallery.main(["--smoke", "--only", "nope", "--out", str(tmp_path)])


def test_gallery_only_keeps_the_record_of_the_other_figures(tmp_path):
  """Redrawing one figure (--only) must not wipe the seconds and numbers of the others."""
  if gallery._speed_rows("mlp") is None:
    pytest.skip("no benchmarks/results/cpu_torch_compare_mlp.json to draw the speed chart from")
  (tmp_path / "gallery.json").write_text(json.dumps(
      {"command": "python -m experiments.gallery", "seconds": {"denoising": 28.5},
       "numbers": {"denoising_psnr_db": {"noisy": 10.0}}}))
  gallery.main(["--smoke", "--data", "digits", "--only", "speed", "--out", str(tmp_path)])
  record = json.loads((tmp_path / "gallery.json").read_text())
  assert record["command"] == "python -m experiments.gallery"
  assert record["seconds"]["denoising"] == 28.5 and "speed" in record["seconds"]
  assert record["numbers"]["denoising_psnr_db"] == {"noisy": 10.0}
  assert "speed_commands" in record["numbers"] and "speed" in record["redrawn_by"]
