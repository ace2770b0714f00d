"""Generation (binarisation, likelihood bounds, the PyTorch reference) and compression
(exact byte counts, JPEG scan data), plus smoke runs of both experiment scripts."""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import configs, data as data_lib, families
from ae_jax.applications import compression as compress, generation as generate
from ae_jax.errors import ConfigError
from ae_jax.fit import fit


# ---- compression: byte counts -------------------------------------------------------

def test_pack_bits_known_value():
  assert compress.pack_bits([1, 2, 3], 2) == bytes([0b01101100])
  assert compress.pack_bits([5], 3) == bytes([0b10100000])
  np.testing.assert_array_equal(compress.unpack_bits(bytes([0b01101100]), 3, 2), [1, 2, 3])


@pytest.mark.parametrize("mode", ["global", "per_image"])
@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8, 12])
def test_quantizer_byte_count_is_the_packed_length(bits, mode):
  z = np.random.RandomState(bits).randn(40, 13) * 3.0
  quant = compress.UniformQuantizer(bits, mode).fit(z)
  levels, side = quant.quantize(z)
  expected = math.ceil(13 * bits / 8) + (compress.SIDE_INFO_BYTES if mode == "per_image" else 0)
  assert quant.bytes_per_image(13) == expected
  for i in range(5):
    payload = quant.pack(levels[i], side[i])
    assert len(payload) == expected
    got, got_side = quant.unpack(payload, 13)
    np.testing.assert_array_equal(got[0], levels[i])
    np.testing.assert_array_equal(quant.dequantize(got, got_side),
                                  quant.dequantize(levels[i:i + 1], side[i:i + 1]))


@pytest.mark.parametrize("mode", ["global", "per_image"])
def test_quantizer_error_is_at_most_half_a_cell(mode):
  z = np.random.RandomState(0).uniform(-2, 5, size=(200, 8))
  quant = compress.UniformQuantizer(4, mode).fit(z)
  cell = (z.max(0) - z.min(0)) / 16 if mode == "global" else (
      (z.max(1) - z.min(1)) / 16)[:, None]
  err = np.abs(quant.round_trip(z) - z)
  assert np.all(err <= cell / 2 * (1 + 1e-2) + 1e-3)


def test_vq_bytes_count_fixed_length_indices():
  assert compress.index_bits(64) == 6 and compress.index_bits(65) == 7
  assert compress.vq_bytes_per_image(16, 64) == 12
  assert compress.vq_bytes_per_image(32, 256) == 32
  assert compress.vq_bytes_per_image(3, 5) == 2


def test_jpeg_scan_data_is_part_of_the_file(digits):
  image = np.kron(digits[0, ..., 0], np.ones((3, 3)))  # 24x24
  decoded, file_bytes, scan_bytes = compress.jpeg_round_trip(image, 50)
  assert decoded.shape == (24, 24, 1)
  assert 0 < scan_bytes < file_bytes
  assert np.mean(np.abs(decoded[..., 0] - image)) < 0.1
  with pytest.raises(ValueError):
    compress.jpeg_scan_bytes(b"\xff\xd8\x00\x00")


# ---- generation ---------------------------------------------------------------------

def test_binarize_draws_fresh_binary_pixels():
  x = jnp.full((4, 6, 6, 1), 0.5)
  keys = jax.random.split(jax.random.key(0), 4)
  a = families.binarize(keys, x)
  b = families.binarize(jax.random.split(jax.random.key(1), 4), x)
  assert set(np.unique(np.asarray(a))) <= {0.0, 1.0}
  np.testing.assert_array_equal(a, families.binarize(keys, x))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  big = families.binarize(jax.random.split(jax.random.key(2), 64), jnp.full((64, 100), 0.3))
  assert abs(float(big.mean()) - 0.3) < 0.02


def _vae_terms(cfg, x, key):
  model = families.build_model(cfg, x.shape[1:])
  params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, x)
  keys = jax.random.split(key, x.shape[0])
  return families.get_family("vae").terms(model, params, {"x": x}, keys, 0, cfg, True)


def test_vae_objective_binarizes_each_batch(cfg):
  cfg.model.family, cfg.model.recon_loss = "vae", "bce"
  binary = (jax.random.uniform(jax.random.key(0), (8, 8, 8, 1)) > 0.5).astype(jnp.float32)
  plain = _vae_terms(cfg, binary, jax.random.key(1))
  cfg.objective.binarize = True
  same = _vae_terms(cfg, binary, jax.random.key(1))
  np.testing.assert_allclose(plain["loss"], same["loss"], rtol=1e-6)
  grey = jnp.full((8, 8, 8, 1), 0.5)
  first = _vae_terms(cfg, grey, jax.random.key(1))["recon"]
  second = _vae_terms(cfg, grey, jax.random.key(2))["recon"]
  assert not np.allclose(first, second)


def test_binarize_needs_a_bernoulli_likelihood(cfg):
  cfg.model.family, cfg.model.recon_loss = "vae", "gaussian"
  cfg.objective.binarize = True
  with pytest.raises(ConfigError, match="binarize"):
    families.build_model(cfg, (8, 8, 1))


def test_binarize_fixed_is_reproducible(digits):
  a = generate.binarize_fixed(digits[:50], 3)
  np.testing.assert_array_equal(a, generate.binarize_fixed(digits[:50], 3))
  assert set(np.unique(a)) <= {0.0, 1.0}
  assert abs(a.mean() - digits[:50].mean()) < 0.03


@pytest.fixture(scope="module")
def trained_vae(digits_data):
  x, y = digits_data
  cfg = generate.vae_config(widths=(64,), latent_dim=4, epochs=8, batch_size=64)
  return fit(cfg, train_data=data_lib.sources.make_array_data(x[:1500], y[:1500], "digits"),
             progress=False), generate.binarize_fixed(x[1500:1600], 0)


def test_importance_sampled_nll_is_at_most_the_negative_elbo(trained_vae):
  model, x = trained_vae
  elbo = generate.estimate_elbo(model, x, num_samples=100)["elbo"]
  nll = generate.estimate_nll(model, x, num_samples=500, chunk=250)
  assert nll.shape == elbo.shape == (100,)
  assert np.all(np.isfinite(nll))
  assert nll.mean() < -elbo.mean()
  assert np.mean(nll <= -elbo) >= 0.9


def test_interpolation_and_perturbations(trained_vae):
  model, x = trained_vae
  path = generate.interpolate(model, x[0], x[1], 5)
  assert path.shape == (5, 8, 8, 1)
  assert np.all((path >= 0) & (path <= 1))
  extra = generate.perturb_latents(model, x[:3], 4)
  assert extra.shape == (12, 8, 8, 1)


def test_finetune_continues_from_the_trained_weights(trained_vae, digits_data):
  model, x = trained_vae
  data = data_lib.sources.make_array_data(digits_data[0][:128], digits_data[1][:128], "d")
  tuned = generate.finetune(model, data, epochs=1, learning_rate=1e-4)
  assert tuned.step == model.step + 2
  before, after = (jax.tree.leaves(m.params)[0] for m in (model, tuned))
  assert 0 < float(jnp.max(jnp.abs(after - before))) < 0.05
  assert np.all(np.isfinite(generate.estimate_elbo(tuned, x)["elbo"]))


def test_torch_reference_has_the_same_network(digits):
  torch = pytest.importorskip("torch")
  net, history = generate.train_torch_vae(digits[:256], epochs=1, widths=(32,), latent_dim=3,
                                          batch_size=64)
  assert len(history) == 1 and np.isfinite(history[0])
  cfg = generate.vae_config(widths=(32,), latent_dim=3)
  model = generate.torch_to_trained(net, cfg, digits.shape[1:])
  x = digits[:5]
  with torch.no_grad():
    flat = torch.as_tensor(x.reshape(5, -1))
    mean = net.to_mean(net.encoder(flat)).numpy()
    probs = torch.sigmoid(net.decoder(torch.as_tensor(mean))).numpy()
  np.testing.assert_allclose(model.encode(x), mean, atol=1e-5)
  np.testing.assert_allclose(model.decode(mean).reshape(5, -1), probs, atol=1e-5)


# ---- smoke runs of the experiment scripts ---------------------------------------------

needs_mnist = pytest.mark.shared_data("mnist_t10k")


@pytest.fixture
def experiments_importable(monkeypatch):
  """The repo root on sys.path, so `experiments` imports under plain `pytest` too."""
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))


@pytest.mark.slow
@needs_mnist
def test_generation_smoke(tmp_path, experiments_importable, fewer_optimizations):
  from experiments import generation
  result = generation.main(["--smoke", "--out", str(tmp_path)])
  for name in ("result.json", "table.md", "samples.png", "interpolation.png",
               "augmentation.png"):
    assert (tmp_path / name).exists(), name
  assert all(np.isfinite(r["test ELBO (nats)"]) for r in result["nll"])
  assert all(np.isfinite(r["validation ELBO (nats)"]) for r in result["nll"])
  assert sum(r["chosen"] for r in result["finetune_validation"]) == 1
  assert result["protocol"]["cpu_model"] and result["protocol"]["tuned_on_validation"]
  assert "lr" in result["finetune"][1]["training"]


@pytest.mark.slow
@needs_mnist
def test_compression_smoke(tmp_path, experiments_importable, fewer_optimizations):
  from experiments import compression
  result = compression.main(["--smoke", "--out", str(tmp_path)])
  for name in ("result.json", "table.md", "rate_distortion.png", "reconstructions.png"):
    assert (tmp_path / name).exists(), name
  assert result["curves"]
  assert all("val PSNR (dB)" in p and "val bytes/image" in p for p in result["curves"])
  for row in result["goals"]:  # the reported codec is the best on validation within budget
    fits = [p for p in result["curves"] if p["val bytes/image"] <= int(row["budget"].split()[1])
            and p["method"].startswith(("AE latent", "VQ"))]
    if fits:
      best = max(fits, key=lambda p: p["val PSNR (dB)"])
      assert row["PSNR (dB)"] == best["PSNR (dB)"]
  assert result["protocol"]["splits"]["validation"].startswith("100 ")
