"""The rate_distortion family, the codec and `ae-jax compress` / `decompress`."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import cli, codec as codec_lib, data as data_lib, vmap_trials
from ae_jax.errors import ConfigError, DataError
from ae_jax.families import build_model, get_family
from ae_jax.families.rate_distortion import RateDistortionAutoencoder, uniform_noise
from ae_jax.fit import Trained, fit
from _helpers import rd_cfg, rd_init as init


def test_terms_shapes_and_the_loss_by_hand(cfg, digits):
  cfg = rd_cfg(cfg)
  model, params = init(cfg)
  x = jnp.asarray(digits[:5])
  keys = jax.random.split(jax.random.key(1), 5)
  terms = get_family("rate_distortion").terms
  # Compiled: run eagerly, each primitive compiles alone.
  t = jax.jit(lambda p, x, k: terms(model, p, {"x": x}, k, None, cfg, False))(params, x, keys)
  for name in ("loss", "distortion", "mse", "psnr", "bits", "bpp", "aux"):
    chex.assert_shape(t[name], (5,))
  recon = jax.jit(lambda p, x: model.apply(p, x, method=RateDistortionAutoencoder.reconstruct))(
      params, x)
  mse = jnp.mean(jnp.square(recon - x).reshape(5, -1), -1)
  np.testing.assert_allclose(t["mse"], mse, rtol=1e-5)
  np.testing.assert_allclose(t["bpp"], t["bits"] / 64, rtol=1e-6)
  np.testing.assert_allclose(t["loss"], mse + 0.01 * t["bits"] / 64 + t["aux"], rtol=1e-5)
  np.testing.assert_allclose(t["psnr"], -10 * np.log10(mse), rtol=1e-5)


def test_training_adds_noise_for_the_rate_and_rounds_for_the_decoder(cfg, digits):
  x = jnp.asarray(digits[:4])
  keys = jax.random.split(jax.random.key(2), 4)
  noise = uniform_noise(keys, 6)
  assert float(jnp.max(jnp.abs(noise))) <= 0.5
  for quantization in ("ste", "noise"):
    c = rd_cfg(cfg, model__rd_quantization=quantization)
    model, params = init(c)

    @jax.jit  # one program: run eagerly, each primitive compiles alone
    def run(params):
      res = model.apply(params, x, noise=noise)
      rounded = model.apply(params, x, method=RateDistortionAutoencoder.encode)
      # What the decoder sees passes the gradient to the encoder (identity through rounding).
      grad = jax.grad(lambda p: jnp.sum(model.apply(p, x, noise=noise)["y_hat"]))(params)
      direct = jax.grad(lambda p: jnp.sum(model.apply(
          p, x, method=RateDistortionAutoencoder.analysis)))(params)
      return res, rounded, grad, direct

    res, rounded, grad, direct = run(params)
    expect = rounded if quantization == "ste" else res["z"] + noise
    np.testing.assert_allclose(res["y_hat"], expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad["params"]["to_latent"]["kernel"],
                               direct["params"]["to_latent"]["kernel"], rtol=1e-6)


def test_validation_errors(cfg):
  for key, value, message in (("model__rd_quantization", "ceil", "rd_quantization"),
                              ("objective__rd_lambda", -1.0, "rd_lambda"),
                              ("objective__rd_distortion", "l2", "rd_distortion")):
    with pytest.raises(ConfigError, match=message):
      build_model(rd_cfg(cfg.copy_and_resolve_references(), **{key: value}), (8, 8, 1))


def test_lambda_is_traced_and_trades_rate_for_distortion(cfg, digits):
  cfg = rd_cfg(cfg)
  cfg.train.num_steps = 150
  cfg.train.eval_every = cfg.train.log_every = cfg.train.checkpoint_every = 10 ** 9
  cfg.data.val_fraction = 0.0
  cfg.model.widths = (64,)
  runs = vmap_trials.fit_trials(cfg, [{"objective.rd_lambda": 0.0},
                                      {"objective.rd_lambda": 1.0}],
                                train_data=array_data(digits[:512]))
  bits = [r.trained.evaluate(digits[512:768])["bits"] for r in runs]
  mse = [r.trained.evaluate(digits[512:768])["mse"] for r in runs]
  assert bits[1] < 0.7 * bits[0]
  assert mse[1] > mse[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits):
  from ae_jax import configs
  cfg = rd_cfg(configs.get_preset("tiny"))
  cfg.data.name = str(npy(tmp_path_factory.mktemp("data") / "digits.npy", digits))
  cfg.train.num_steps = 60
  path = tmp_path_factory.mktemp("rd") / "work"
  fit(cfg, path, progress=False)
  return path


def array_data(x):
  return data_lib.sources.make_array_data(x, None, "digits")


def npy(path, array):
  np.save(path, array)
  return path


def test_codec_round_trip_is_exact_for_every_example(workdir, digits):
  codec = codec_lib.Codec.load(workdir)
  assert (workdir / codec_lib.TABLES_FILE).is_file()
  x = digits[:64]
  data = codec.compress(x)
  out = codec.decompress(data)
  chex.assert_shape(out, (64, 8, 8, 1))
  np.testing.assert_array_equal(out, codec.reconstruct(x))
  again = codec_lib.Codec.load(workdir)  # reads the saved tables
  np.testing.assert_array_equal(again.decompress(data), out)
  sizes = codec.bytes_per_example(x)
  assert len(codec.compress(x[:1])) == sizes[0]
  # The model's own test-time reconstruction, with the codec's params, rounds on the same grid.
  model_recon = codec.model.apply(codec.params, x, method=RateDistortionAutoencoder.reconstruct)
  np.testing.assert_allclose(out, model_recon, atol=1e-5)


def test_codec_bad_input(workdir, digits, cfg):
  codec = codec_lib.Codec.load(workdir)
  with pytest.raises(DataError, match="expected examples of shape"):
    codec.compress(digits[:2, :4])
  with pytest.raises(DataError, match="NaN"):
    codec.compress(np.full((1, 8, 8, 1), np.nan, np.float32))
  with pytest.raises(DataError, match="check failed"):
    codec.decompress(codec.compress(digits[:3])[:-4] + b"\0\0\0\0")
  # A plain autoencoder (the tiny preset's; untrained: the refusal reads the model only).
  ae = Trained(cfg, *init(cfg), data_lib.Scaler("none").fit(digits[:2]), (8, 8, 1))
  with pytest.raises(ConfigError, match="entropy bottleneck"):
    codec_lib.Codec.from_trained(ae)


def test_cli_compress_and_decompress(workdir, digits, tmp_path, capsys):
  from PIL import Image
  x = digits[:10]
  src = npy(tmp_path / "x.npy", x[..., 0])  # grey images without the channel axis
  blob = tmp_path / "x.aejx"
  assert cli.main(["compress", "--workdir", str(workdir), "--input", str(src),
                   "--out", str(blob)]) == 0
  assert "10 example(s)" in capsys.readouterr().out
  back = tmp_path / "back.npy"
  assert cli.main(["decompress", "--workdir", str(workdir), "--input", str(blob),
                   "--out", str(back)]) == 0
  codec = codec_lib.Codec.load(workdir)
  np.testing.assert_array_equal(np.load(back), codec.reconstruct(x))
  png = tmp_path / "one.png"
  Image.fromarray((x[0, :, :, 0] * 255).round().astype(np.uint8)).save(png)
  assert cli.main(["compress", "--workdir", str(workdir), "--input", str(png)]) == 0
  assert cli.main(["decompress", "--workdir", str(workdir), "--input",
                   str(png.with_suffix(".aejx")), "--out", str(tmp_path / "one_back.png")]) == 0
  decoded = np.asarray(Image.open(tmp_path / "one_back.png"), np.float32) / 255
  expect = codec.reconstruct(np.asarray(Image.open(png), np.float32)[None, :, :, None] / 255)
  np.testing.assert_allclose(decoded, expect[0, :, :, 0], atol=0.5 / 255 + 1e-6)
  blob.write_bytes(blob.read_bytes()[:-1])
  assert cli.main(["decompress", "--workdir", str(workdir), "--input", str(blob)]) == 2
  assert "check failed" in capsys.readouterr().err


def test_ms_ssim():
  from experiments.rate_distortion import ms_ssim
  rng = np.random.default_rng(0)
  a = rng.random((3, 28, 28, 1))
  np.testing.assert_allclose(ms_ssim(a, a), 1.0, rtol=1e-12)
  noisy = [ms_ssim(a, np.clip(a + s * rng.standard_normal(a.shape), 0, 1)).mean()
           for s in (0.05, 0.2)]
  assert 1.0 > noisy[0] > noisy[1] > 0
  # A constant shift changes only luminance, at the coarsest scale: hand value.
  b, c = np.full((1, 28, 28), 0.5), np.full((1, 28, 28), 0.6)
  lum = (2 * 0.5 * 0.6 + 1e-4) / (0.25 + 0.36 + 1e-4)
  np.testing.assert_allclose(ms_ssim(b, c), lum ** (0.3001 / (0.0448 + 0.2856 + 0.3001)),
                             rtol=1e-9)


@pytest.mark.slow
def test_experiment_smoke(tmp_path):
  if "mnist_t10k" not in data_lib.available():
    pytest.skip("needs the shared mnist_t10k data (AE_JAX_DATA_DIR)")
  from experiments import rate_distortion
  # Two PCA steps: one sweep each, every (step, lambda) a candidate of its own.
  points = rate_distortion.main(["--smoke", "--init-step", "0.4", "0.2", "--out", str(tmp_path)])
  assert (tmp_path / "rate_distortion.png").is_file()
  assert (tmp_path / "decoded_grid.png").is_file()
  ours = [p for p in points if p["method"] == "ours" and p["split"] == "test"]
  assert len(ours) == 4 and all(p["bytes"] >= 3 for p in ours)
  assert sorted(p["init_step"] for p in ours) == [0.2, 0.2, 0.4, 0.4]
  assert len({p["setting"] for p in ours}) == 4
  # The scale hyperprior through the same script (ours only).
  hyper = rate_distortion.main(["--smoke", "--prior", "hyperprior", "--hyper-dim", "8",
                                "--methods", "ours", "--out", str(tmp_path / "hyperprior")])
  ours = [p for p in hyper if p["method"] == "ours" and p["split"] == "test"]
  assert len(ours) == 2 and all(p["prior"] == "hyperprior" and p["bytes"] >= 3 for p in ours)


def pca_cfg(cfg, **fields):
  """A copy of cfg as a linear rate_distortion codec initialised from the KLT."""
  return rd_cfg(cfg.copy_and_resolve_references(),
                **{"model__widths": (), "model__rd_init": "pca", **fields})


def test_pca_init_is_the_klt_of_the_sample(cfg, digits):
  from sklearn.decomposition import PCA
  x = np.asarray(digits[:300], np.float64)
  flat = x.reshape(len(x), -1)
  c = pca_cfg(cfg, model__recon_loss="mse", model__rd_init_step=0.25)
  model, params = init(c)
  params = get_family("rate_distortion").init_from_data(params, x, c)
  y = np.asarray(model.apply(params, jnp.asarray(x, jnp.float32),
                             method=RateDistortionAutoencoder.analysis))
  pca = PCA(6).fit(flat)
  # Each latent is one principal coordinate in units of the step (up to its sign).
  coords = pca.transform(flat) / 0.25
  signs = np.sign(np.sum(y * coords, 0))
  np.testing.assert_allclose(y * signs, coords, atol=2e-4)
  # The continuous decoder output is the PCA reconstruction (linear output).
  out = model.apply(params, jnp.asarray(y), method=RateDistortionAutoencoder.decode)
  np.testing.assert_allclose(np.asarray(out).reshape(flat.shape),
                             pca.inverse_transform(pca.transform(flat)), atol=1e-4)
  # With logits, the decoder is the least-squares fit of the clipped logits on the codes.
  cb = pca_cfg(cfg)
  model_b, params_b = init(cb)
  params_b = get_family("rate_distortion").init_from_data(params_b, x, cb)
  yb = model_b.apply(params_b, jnp.asarray(x, jnp.float32), method=RateDistortionAutoencoder.analysis)
  out_b = np.asarray(model_b.apply(params_b, yb, method=RateDistortionAutoencoder.decode))
  clipped = np.clip(flat, 0.02, 0.98)
  target = np.log(clipped / (1 - clipped))
  design = np.concatenate([np.asarray(yb) / 10.0, np.ones((len(x), 1))], 1)
  best = design @ np.linalg.lstsq(design, target, rcond=None)[0]
  np.testing.assert_allclose(out_b.reshape(flat.shape), best, atol=2e-3)


def test_pca_init_reaches_every_trial_of_a_sweep_and_random_init_is_untouched(cfg, digits):
  x = np.asarray(digits[:64])
  c = pca_cfg(cfg, model__recon_loss="mse")
  cfgs = [vmap_trials.with_overrides(c, {"objective.rd_lambda": lam}) for lam in (0.0, 1.0)]
  _, state, _, _ = vmap_trials.trial_state(c, cfgs, (8, 8, 1), 5, data=x)
  model, params = init(c)
  expect = get_family("rate_distortion").init_from_data(params, x, c)
  for t in range(2):
    np.testing.assert_allclose(state.params["params"]["to_latent"]["kernel"][t],
                               expect["params"]["to_latent"]["kernel"], rtol=1e-6)
  r = rd_cfg(cfg.copy_and_resolve_references())
  _, params = init(r)
  same = get_family("rate_distortion").init_from_data(params, x, r)
  chex.assert_trees_all_equal(same, params)


def test_pca_init_bad_settings(cfg, digits):
  with pytest.raises(ConfigError, match="linear transform"):
    build_model(pca_cfg(cfg, model__widths=(16,)), (8, 8, 1))
  with pytest.raises(ConfigError, match="rd_init"):
    build_model(rd_cfg(cfg.copy_and_resolve_references(), model__rd_init="kmeans"), (8, 8, 1))
  with pytest.raises(ConfigError, match="rd_init_step"):
    build_model(pca_cfg(cfg, model__rd_init_step=0.0), (8, 8, 1))
  c = pca_cfg(cfg, model__latent_dim=64)
  model, params = init(c)
  with pytest.raises(ConfigError, match="latent_dim <= min"):
    get_family("rate_distortion").init_from_data(params, np.asarray(digits[:10]), c)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["rd_diagnostics", "rd_select"])
def test_validation_only_scripts_smoke(tmp_path, script):
  """rd_diagnostics and rd_select run end to end (the gdn part of rd_diagnostics starts
  from random weights even where the dense codec starts from PCA) and write their tables."""
  if "mnist_t10k" not in data_lib.available():
    pytest.skip("needs the shared mnist_t10k data (AE_JAX_DATA_DIR)")
  import importlib
  module = importlib.import_module(f"experiments.{script}")
  rows = module.main(["--smoke", "--out", str(tmp_path)])
  assert rows and (tmp_path / "result.json").is_file() and (tmp_path / "table.md").is_file()
  assert all(np.isfinite(r.get("val mse", r.get("val PSNR"))) for r in rows)


def test_rate_controlled_codec_meets_a_byte_cap_per_image(cfg, digits):
  """Each image takes the codec with the smallest error among those whose file fits the
  cap (checked by brute force); files decode to the chosen reconstruction; images that
  no codec fits are refused, or coded at their smallest with overflow='smallest'."""
  cfg = rd_cfg(cfg)
  cfg.train.num_steps = 100
  cfg.train.eval_every = cfg.train.log_every = cfg.train.checkpoint_every = 10 ** 9
  cfg.data.val_fraction = 0.0
  runs = vmap_trials.fit_trials(cfg, [{"objective.rd_lambda": lam} for lam in (0.0, 0.05, 1.0)],
                                train_data=array_data(digits[:512]))
  codecs = [codec_lib.Codec.from_trained(r.trained) for r in runs]
  rc = codec_lib.RateControlledCodec(codecs)
  x = digits[512:552]
  sizes = np.stack([1 + c.bytes_per_example(x) for c in codecs])
  errors = np.stack([((c.reconstruct(x) - x) ** 2).reshape(len(x), -1).mean(1) for c in codecs])
  cap = int(np.median(sizes[1]))
  fits = sizes.min(0) <= cap
  choice, nbytes, recon = rc.choose(x[fits], cap)
  assert np.all(nbytes <= cap) and len(set(choice.tolist())) >= 1
  for i, (k, j) in enumerate(zip(choice, np.flatnonzero(fits))):
    allowed = [m for m in range(3) if sizes[m, j] <= cap]
    assert k == min(allowed, key=lambda m: errors[m, j])
    assert nbytes[i] == sizes[k, j]
  files = rc.compress(x[fits], cap)
  assert [len(f) for f in files] == nbytes.tolist()
  np.testing.assert_array_equal(rc.decompress(files), recon)
  # A cap below every codec's smallest file of some image.
  tight = int(sizes.min(0).max()) - 1
  with pytest.raises(DataError, match="max_bytes"):
    rc.compress(x, tight)
  _, smallest, _ = rc.choose(x, tight, overflow="smallest")
  over = sizes.min(0) > tight
  np.testing.assert_array_equal(smallest[over], sizes.min(0)[over])
  with pytest.raises(DataError, match="names codec 7"):
    rc.decompress([bytes([7]) + files[0][1:]])
  with pytest.raises(DataError, match="too short"):
    rc.decompress([b""])
  with pytest.raises(ConfigError, match="1 to 256"):
    codec_lib.RateControlledCodec([])
  with pytest.raises(ConfigError, match="overflow"):
    rc.choose(x, cap, overflow="drop")
