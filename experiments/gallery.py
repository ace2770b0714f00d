"""The README's figures: short runs of small models, drawn with `ae_jax.plots`.

Protocol: MNIST's fixed 8,000 / 2,000 split of the 10k test set (`mnist_t10k`, the shared
data; `--data digits` for scikit-learn's digits); MLP models (256 -> 128 -> latent; 512 ->
256 -> 128 for denoising and super-resolution) trained
for `--epochs` on the training part with nothing tuned, every figure drawn on test images.
ROC curves: ECG5000 (train on the normal beats of TRAIN, score TEST) and MNIST one-class
(digit 0 normal). The speed chart reads the committed benchmark JSON
(`benchmarks/results/cpu_torch_compare_*.json`). Each PNG is at most 150 KB; the numbers
in the titles and `gallery.json` come from these short runs, not from the full
experiments, whose tables are in experiments/RESULTS_*.md.

  python -m experiments.gallery [--smoke] [--out docs/figures] [--only NAME,...]
"""

import json
import pathlib
import platform
import subprocess
import time

import numpy as np

from ae_jax import data, plots
from ae_jax.anomaly import AutoencoderDetector
from ae_jax.applications import (compression, denoise, features, generation, inpaint, metrics,
                                 superres)
from ae_jax.fit import fit
from ae_jax import results as _io

NAME = "gallery"
MAX_BYTES = 150_000
BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"
FAMILY_ROWS = (("autoencoder", "ae", {}),
               ("sparse top-k", "sparse", {"model.sparsity": "topk", "model.k": 8}),
               ("denoising", "denoising", {"objective.noise_level": 0.3}),
               ("VQ-VAE", "vqvae", {"model.num_codes": 64, "model.code_dim": 4}))


class Context:
  """Data, training length and the models shared by several figures."""

  def __init__(self, dataset: str, epochs: int, smoke: bool, seed: int):
    if dataset == "digits":
      full = data.load("digits")
      order = np.random.default_rng(seed).permutation(len(full))
      cut = len(order) // 5
      train, test = full.take(order[cut:]), full.take(order[:cut])
    else:
      train, test = _io.load_splits(dataset)
    if smoke:
      train, test = _io.smoke_subset(train, 300), _io.smoke_subset(test, 100)
    self.dataset, self.epochs, self.smoke, self.seed = dataset, epochs, smoke, seed
    self.x_train, self.y_train, self.x_test, self.y_test = train.x, train.y, test.x, test.y
    self.numbers: dict = {}
    self._models: dict = {}

  def train(self, latent_dim: int, family: str = "ae", widths=(256, 128), **fields):
    """An MLP model of `family`, cached by its settings; fields: {'section.field': value}."""
    key = (latent_dim, family, tuple(widths), tuple(sorted(fields.items())))
    if key not in self._models:
      cfg = features.ae_config(latent_dim, family=family, network="mlp", widths=widths,
                               epochs=self.epochs, batch_size=128)
      cfg.seed = self.seed
      for name, value in fields.items():
        section, field = name.split(".")
        cfg[section][field] = value
      self._models[key] = fit(cfg, train_data=data.ArrayData(self.x_train, None, "train",
                                                             "image"), progress=False)
    return self._models[key]

  def vae(self):
    if "vae" not in self._models:
      cfg = generation.vae_config(latent_dim=8, widths=(256, 128), epochs=2 * self.epochs,
                                batch_size=128, seed=self.seed)
      self._models["vae"] = fit(cfg, train_data=data.ArrayData(self.x_train, None, "train",
                                                               "image"), progress=False)
    return self._models["vae"]


def fig_reconstructions(ctx: Context):
  x = ctx.x_test[:10]
  rows, mse = {"input": x}, {}
  for label, family, fields in FAMILY_ROWS:
    model = ctx.train(16, family, **fields)
    rows[label] = model.reconstruct(x)
    mse[label] = features.mse(ctx.x_test, model.reconstruct(ctx.x_test))
  vae = ctx.vae()
  rows["VAE (mean)"] = vae.reconstruct(x)
  mse["VAE (mean)"] = features.mse(ctx.x_test, vae.reconstruct(ctx.x_test))
  ctx.numbers["test_mse_per_family"] = mse
  return plots.image_grid(rows, n=10, title="Test images and their reconstructions, "
                          "one row per family (16-d latent; VAE 8-d)")


def fig_vae(ctx: Context):
  vae = ctx.vae()
  elbo = generation.estimate_elbo(vae, generation.binarize_fixed(ctx.x_test[:1000]))["elbo"]
  ctx.numbers["vae_test_elbo_nats"] = float(elbo.mean())
  return plots.samples_and_interpolation(
      vae.sample(10, seed=ctx.seed), generation.interpolate(vae, ctx.x_test[0], ctx.x_test[1], 10),
      title=f"VAE (8-d latent, test ELBO {elbo.mean():.1f} nats): prior samples, and the "
            "decoded line between two test images' codes")


def fig_latent_scatter(ctx: Context):
  ae2 = ctx.train(2)
  pca = features.PCA(2).fit(ctx.x_train)
  mse = {"autoencoder": features.mse(ctx.x_test, ae2.reconstruct(ctx.x_test)),
         "PCA": features.mse(ctx.x_test, pca.reconstruct(ctx.x_test))}
  ctx.numbers["latent2_test_mse"] = mse
  return plots.latent_scatter(
      {f"autoencoder 2-d latent (MSE {mse['autoencoder']:.4f})": ae2.encode(ctx.x_test),
       f"PCA 2 components (MSE {mse['PCA']:.4f})": pca.encode(ctx.x_test)},
      ctx.y_test, title=f"{len(ctx.x_test)} test images coloured by digit")


def fig_denoising(ctx: Context):
  dae = ctx.train(128, "denoising", (512, 256), **{"objective.noise_level": 0.3})
  noisy = denoise.corrupt_fixed(ctx.x_test, "gaussian", 0.3, seed=1)
  clean_hat = dae.reconstruct(noisy)
  median = denoise.median_filter(noisy, 3)
  psnr = {name: float(metrics.psnr(ctx.x_test, est).mean())
          for name, est in (("noisy", noisy), ("median 3x3", median), ("autoencoder", clean_hat))}
  ctx.numbers["denoising_psnr_db"] = psnr
  return plots.image_grid(
      {"noisy": noisy, f"median 3×3\n{psnr['median 3x3']:.1f} dB": median,
       f"denoising AE\n{psnr['autoencoder']:.1f} dB": clean_hat, "clean": ctx.x_test},
      n=10, title=f"Gaussian noise σ=0.3 (noisy {psnr['noisy']:.1f} dB): mean test PSNR per row")


def fig_inpainting(ctx: Context):
  side = ctx.x_train.shape[1]
  block, region = side * 5 // 14, side * 5 // 7
  model = ctx.train(64, "denoising", **{"objective.noise": "block", "objective.block_size": block,
                                        "objective.block_region": region})
  masks = inpaint.hole_masks(len(ctx.x_test), ctx.x_test.shape[1:], block, region, seed=2)
  holed = inpaint.cut(ctx.x_test, masks)
  filled, mean = inpaint.model_fill(model, holed, masks), inpaint.mean_fill(holed, masks)
  psnr = {"mean fill": metrics.pooled_psnr(ctx.x_test, mean, masks),
          "autoencoder": metrics.pooled_psnr(ctx.x_test, filled, masks)}
  ctx.numbers["inpainting_hole_psnr_db"] = psnr
  return plots.before_after(
      holed, filled, ctx.x_test, extra={f"mean fill\n{psnr['mean fill']:.1f} dB": mean},
      labels=("with hole", f"autoencoder\n{psnr['autoencoder']:.1f} dB", "original"), n=10,
      title=f"Inpainting a {block}×{block} hole in the central {region}×{region}: "
            "PSNR inside the holes")


def fig_superres(ctx: Context):
  model = ctx.train(128, "denoising", (512, 256), **{"objective.noise": "downsample"})
  small = superres.box_downsample(ctx.x_test)
  restored = model.reconstruct(superres.repeat_upsample(small))
  spline = superres.scipy_upsample(small, 2, order=3)
  psnr = {"cubic spline": float(metrics.psnr(ctx.x_test, spline).mean()),
          "autoencoder": float(metrics.psnr(ctx.x_test, restored).mean())}
  ctx.numbers["superres_psnr_db"] = psnr
  h = ctx.x_test.shape[1]
  return plots.before_after(
      superres.repeat_upsample(small), restored, ctx.x_test,
      extra={f"cubic spline\n{psnr['cubic spline']:.1f} dB": spline},
      labels=(f"{h // 2}×{h // 2} input", f"autoencoder\n{psnr['autoencoder']:.1f} dB",
              f"{h}×{h} original"), n=10, title="Super-resolution ×2: mean test PSNR per row")


def _baselines(train, test) -> dict[str, np.ndarray]:
  """Scores of the classical detectors (higher = more anomalous), fitted on `train`."""
  from sklearn.ensemble import IsolationForest  # pylint: disable=g-import-not-at-top
  from sklearn.neighbors import NearestNeighbors  # pylint: disable=g-import-not-at-top
  train, test = features.flat(train), features.flat(test)
  forest = IsolationForest(random_state=0).fit(train)
  knn = NearestNeighbors(n_neighbors=5).fit(train)
  pca = features.PCA(min(8, train.shape[1])).fit(train)
  return {"isolation forest": -forest.score_samples(test),
          "kNN (mean distance, k=5)": knn.kneighbors(test)[0].mean(1),
          "PCA-8 error": np.square(test - features.flat(pca.reconstruct(test))).mean(1)}


def _detector(ctx: Context, network: str = "mlp") -> AutoencoderDetector:
  if ctx.smoke:
    return AutoencoderDetector(network=network, ensemble=1, max_steps=20, seed=ctx.seed)
  return AutoencoderDetector(network=network, seed=ctx.seed)


def fig_roc(ctx: Context):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  panels = []
  if "ecg5000" in data.available():
    normal = data.load("ecg5000", "train").filter_labels([1]).x
    test = data.load("ecg5000", "test")
    curves = {f"AE-{net} (ours)": _detector(ctx, net).fit(normal).decision_function(test.x)
              for net in ("mlp", "conv1d")}
    panels.append((f"ECG5000: {len(normal)} normal training beats, {len(test)} test beats",
                   (test.y != 1).astype(int), {**curves, **_baselines(normal, test.x)}))
  normal = ctx.x_train[ctx.y_train == 0]
  labels = (ctx.y_test != 0).astype(int)
  scores = {"AE-mlp (ours)": _detector(ctx).fit(normal).decision_function(ctx.x_test),
            **_baselines(normal, ctx.x_test)}
  panels.append((f"{ctx.dataset} one-class: digit 0 normal, {len(ctx.x_test)} test images",
                 labels, scores))
  fig = Figure(figsize=(5.2 * len(panels), 4.6))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  ctx.numbers["roc_auc"] = {}
  for ax, (title, y, curves) in zip(axes, panels):
    plots.roc_curves({k: (y, v) for k, v in curves.items()}, title=title, ax=ax)
    ax.title.set_fontsize(9)
    ctx.numbers["roc_auc"][title] = {k: float(roc_auc_score(y, v)) for k, v in curves.items()}
  fig.suptitle("ROC curves of the autoencoder detectors beside classical ones (default "
               "settings, nothing tuned)", fontsize=10)
  fig.tight_layout(pad=0.5)
  return fig


def fig_rate_distortion(ctx: Context):
  ae = ctx.train(32)
  pca = features.PCA(32).fit(ctx.x_train)
  curves = {}
  for name, enc, dec in (("AE-32 + uniform quantiser", ae.encode, ae.decode),
                         ("PCA-32 + uniform quantiser", pca.encode,
                          lambda z: pca.decode(z, ctx.x_test.shape[1:]))):
    rates, quality = [], []
    for bits in (2, 3, 4, 5, 6, 8):
      quantiser = compression.UniformQuantizer(bits).fit(enc(ctx.x_train))
      decoded = np.clip(dec(quantiser.round_trip(enc(ctx.x_test))), 0, 1)
      rates.append(quantiser.bytes_per_image(32))
      quality.append(float(metrics.psnr(ctx.x_test, decoded).mean()))
    curves[name] = (rates, quality)
  n = min(300, len(ctx.x_test))
  jpeg = compression.jpeg_curve(ctx.x_test[:n], (5, 10, 20, 30, 50, 70, 90))
  curves["JPEG (scan bytes, shared tables)"] = (
      [r["scan_bytes"] for r in jpeg],
      [float(metrics.psnr(ctx.x_test[:n], r["recon"]).mean()) for r in jpeg])
  ctx.numbers["rate_distortion"] = curves
  return plots.rate_distortion(curves, title=f"Rate–distortion on {ctx.dataset} test images")


def _speed_rows(name: str):
  path = BENCHMARKS / f"cpu_torch_compare_{name}.json"
  return json.loads(path.read_text()) if path.exists() else None


def fig_speed(ctx: Context):
  groups, commands = {}, []
  for name, label in (("mlp", "MLP"), ("conv28", "conv 28×28")):
    result = _speed_rows(name)
    if result is None:
      continue
    commands.append(result["command"])
    for row in result["rows"]:
      variants = row["variants"]
      torch_best = max((k for k in variants if k.startswith("torch")),
                       key=lambda k: variants[k]["examples_per_s"])
      groups[f"{label}\n{row['task']} b={row['batch']}"] = {
          "ae_jax (jit)": variants["jax"]["examples_per_s"],
          "PyTorch eager": variants["torch_eager"]["examples_per_s"],
          "PyTorch best variant": variants[torch_best]["examples_per_s"]}
  if not groups:
    return None
  ctx.numbers["speed_commands"] = commands
  return plots.grouped_bars(groups, ylabel="examples / s (log)", log_y=True,
                            title="ae_jax beside PyTorch on the 2-core CPU "
                                  "(benchmarks/results/cpu_torch_compare_*.json)")


FIGURES = {"reconstructions": fig_reconstructions, "vae_samples": fig_vae,
           "latent_scatter": fig_latent_scatter, "denoising": fig_denoising,
           "inpainting": fig_inpainting, "superres": fig_superres, "roc_curves": fig_roc,
           "rate_distortion": fig_rate_distortion, "speed": fig_speed}


def cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
  except OSError:
    return platform.processor()
  lines = [l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")]
  return lines[0] if lines else platform.processor()


def main(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data", default="mnist_t10k", help="mnist_t10k or digits")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(FIGURES)}")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out or "docs/figures")
  out.mkdir(parents=True, exist_ok=True)
  names = [n for n in args.only.split(",") if n] or list(FIGURES)
  unknown = sorted(set(names) - set(FIGURES))
  if unknown:
    p.error(f"unknown figures {unknown}; valid: {', '.join(FIGURES)}")
  dataset = args.data if args.data in data.available() else "digits"
  ctx = Context(dataset, 1 if args.smoke else args.epochs, args.smoke, args.seed)
  t_start, seconds, written = time.time(), {}, []
  for name in names:
    t0 = time.time()
    fig = FIGURES[name](ctx)
    if fig is None:
      print(f"{name}: skipped (no saved outputs to draw from)")
      continue
    path = plots.save(fig, out / f"{name}.png")
    size = path.stat().st_size
    if size > MAX_BYTES:
      raise RuntimeError(f"{path} is {size:,} bytes, over the {MAX_BYTES:,} byte limit")
    seconds[name] = round(time.time() - t0, 1)
    written.append(path)
    print(f"{path} ({size / 1000:.0f} KB, {seconds[name]} s)")
  record = {"command": _io.command(argv and ["gallery", *argv]), "data": dataset,
            "train_examples": len(ctx.x_train), "test_examples": len(ctx.x_test),
            "epochs": ctx.epochs, "seconds": seconds,
            "wall_s": round(time.time() - t_start, 1), "cpu": cpu_model(),
            "environment": _io.environment(), "numbers": ctx.numbers}
  path = out / "gallery.json"
  if args.only and path.exists():
    # Redrawing some figures keeps the record of the others: their seconds and numbers
    # stay, and each redrawn figure notes the command that drew it last.
    old_record = json.loads(path.read_text())
    redrawn = {name: record["command"] for name in seconds}
    record = {**old_record,
              "seconds": {**old_record.get("seconds", {}), **seconds},
              "numbers": {**old_record.get("numbers", {}), **_io._plain(ctx.numbers)},
              "redrawn_by": {**old_record.get("redrawn_by", {}), **redrawn}}
  path.write_text(json.dumps(_io._plain(record), indent=1) + "\n")
  print(f"{len(written)} figures in {round(time.time() - t_start, 1)} s on {cpu_model()}")
  return written


if __name__ == "__main__":
  main()
