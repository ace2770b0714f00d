"""Rate-distortion: learned compression with real bitstreams against PCA, JPEG and WebP
on MNIST t10k (CompressAI's import status is recorded; see RESULTS_compression.md).

  python -m experiments.rate_distortion           # the full run (RESULTS_compression.md)
  python -m experiments.rate_distortion --smoke   # seconds, for CI

Protocol: the fixed 8,000 / 2,000 split of mnist_t10k; the 8,000 are split again into
7,000 for training and 1,000 for validation (seeded permutation). Every method's setting
for a byte budget (our lambda and epochs, PCA components and bits, the JPEG / WebP
quality) is the one with the best validation PSNR among those whose mean validation
bytes per image fit the budget; the 2,000 test images are scored once with it. Bytes
are file lengths: our bitstream with its header and check, whole JPEG / WebP files (and
JPEG's scan data alone, for reference); PCA codes are packed fixed-length bits with no
header.

"ours, rate-controlled" (`ae_jax.codec.RateControlledCodec`) caps every image's file at
the budget instead of the mean: the encoder codes each image with every trained codec of
the sweep and keeps the one with the smallest error whose file (1 byte naming the codec +
its stream) fits. Nothing is chosen on validation or test for it; images that no codec
fits are counted as over budget.
"""

import io
import itertools
import time

import numpy as np

from ae_jax import configs, vmap_trials
from ae_jax.applications import compression as compress, metrics
from ae_jax.codec import Codec, RateControlledCodec
from ae_jax import results as _io

NAME = "rate_distortion"
BUDGETS = (32, 64, 128)
GOALS = {64: 26.0, 128: 29.0}
PIXELS = 28 * 28


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--lambdas", type=float, nargs="+",
                 default=[0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032],
                 help="rate weights (per bit per pixel) of our curve, trained in one vmapped sweep")
  p.add_argument("--epochs", type=int, nargs="+", default=[60],
                 help="training lengths to choose from on validation (one sweep each)")
  p.add_argument("--latent", type=int, default=256)
  p.add_argument("--transform", default="dense",
                 help="dense (--network + Dense latent) | gdn (convs + GDN, spatial latent)")
  p.add_argument("--rd-channels", type=int, default=32, help="gdn: hidden channels")
  p.add_argument("--latent-channels", type=int, default=16,
                 help="gdn: channels of the 7x7 latent")
  p.add_argument("--kernel", type=int, default=5, help="gdn: kernel size")
  p.add_argument("--methods", nargs="+", default=["ours", "PCA", "JPEG", "WEBP"],
                 help="which methods to run (ours, PCA, JPEG, WEBP)")
  p.add_argument("--baselines-from", default=None,
                 help="a result.json of an earlier run (same seed and split) whose PCA, JPEG "
                      "and WebP points are reused instead of run again")
  p.add_argument("--network", default="mlp", help="mlp | conv2d")
  p.add_argument("--widths", type=int, nargs="*", default=[],
                 help="MLP widths (none, the default: linear encoder and decoder)")
  p.add_argument("--channels", type=int, nargs="+", default=[32, 64], help="conv channels")
  p.add_argument("--quantization", default="noise", help="noise | ste (model.rd_quantization)")
  p.add_argument("--prior", default="factorized",
                 help="factorized | hyperprior (model.rd_prior: Ballé et al. 2018's scale "
                      "hyperprior codes y with a Gaussian whose scales come from a coded z)")
  p.add_argument("--hyper-dim", type=int, default=32,
                 help="hyperprior: size of the hyper-latent z (model.rd_hyper_dim)")
  p.add_argument("--hyper-widths", type=int, nargs="*", default=[128],
                 help="hyperprior: hidden widths of h_a and h_s (model.rd_hyper_widths)")
  p.add_argument("--init", default="pca",
                 help="random | pca (model.rd_init: the linear dense transform from the KLT; "
                      "an MLP with --widths or the gdn transform always starts random)")
  p.add_argument("--init-step", type=float, nargs="+", default=[0.4],
                 help="pca init: quantisation step of a projection, in pixel units; several "
                      "values: one sweep each, chosen from on validation like --epochs")
  p.add_argument("--output", default="sigmoid",
                 help="dense: sigmoid (logits, the default) | linear output; gdn is linear")
  p.add_argument("--batch-size", type=int, default=100)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--val-size", type=int, default=1000)
  p.add_argument("--pca-components", type=int, nargs="+",
                 default=[8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256])
  p.add_argument("--pca-bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
  p.add_argument("--jpeg-qualities", type=int, nargs="+", default=list(range(1, 101)))
  p.add_argument("--webp-qualities", type=int, nargs="+", default=list(range(0, 101, 5)))
  p.add_argument("--timing-images", type=int, default=100,
                 help="test images coded one at a time for the per-image times")
  args = p.parse_args(argv)
  if args.smoke:
    args.lambdas, args.epochs, args.latent, args.widths = [0.004, 0.03], [1], 16, []
    args.pca_components, args.pca_bits = [8, 16], [4]
    args.jpeg_qualities, args.webp_qualities = [10, 50], [10, 50]
    args.timing_images, args.val_size = 5, 100
  return args


# ---- data and metrics --------------------------------------------------------------

def with_defaults(args):
  """args with every option of this script it lacks set to this script's default (its
  --smoke defaults when args.smoke): for the scripts that reuse its splits and configs."""
  defaults = parse(["--smoke"] if args.smoke else [])
  for key, value in vars(defaults).items():
    if not hasattr(args, key):
      setattr(args, key, value)
  return args


def splits(args):
  """(train, val, test) ArrayData: 7,000 / 1,000 of mnist_t10k 'train' and its 'test'."""
  train, test = _io.load_splits("mnist_t10k")
  order = np.random.RandomState(args.seed).permutation(len(train))
  val_size = args.val_size
  if args.smoke:
    train, test = _io.smoke_subset(train, 600), _io.smoke_subset(test, 100)
    order = np.random.RandomState(args.seed).permutation(len(train))
  return train.take(order[val_size:]), train.take(order[:val_size]), test


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> np.ndarray:
  g = np.exp(-0.5 * np.square(np.arange(size) - (size - 1) / 2) / sigma ** 2)
  return g / g.sum()


def _filter(img, g):
  """Valid separable filtering of (N, H, W) images."""
  from numpy.lib.stride_tricks import sliding_window_view  # pylint: disable=g-import-not-at-top
  rows = sliding_window_view(img, len(g), axis=1) @ g
  return sliding_window_view(rows, len(g), axis=2) @ g


MS_SSIM_WEIGHTS = np.asarray([0.0448, 0.2856, 0.3001])


def ms_ssim(a, b, scales: int = 3) -> np.ndarray:
  """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003) of grey images (N, H, W[, 1]) in
  [0, 1], (N,): 3 scales (28, 14, 7 pixels for MNIST; the standard 5 need >= 161 pixels),
  a 7x7 Gaussian window of sigma 1.5, the first 3 standard weights renormalised,
  k1 = 0.01, k2 = 0.03, contrast-structure terms clipped at 0."""
  a = np.asarray(a, np.float64).reshape(len(a), *np.shape(a)[1:3])
  b = np.asarray(b, np.float64).reshape(a.shape)
  g, c1, c2 = _gaussian_window(), 0.01 ** 2, 0.03 ** 2
  weights = MS_SSIM_WEIGHTS[:scales] / MS_SSIM_WEIGHTS[:scales].sum()
  out = np.ones(len(a))
  for j in range(scales):
    mu_a, mu_b = _filter(a, g), _filter(b, g)
    var_a = _filter(a * a, g) - mu_a ** 2
    var_b = _filter(b * b, g) - mu_b ** 2
    cov = _filter(a * b, g) - mu_a * mu_b
    cs = np.maximum(((2 * cov + c2) / (var_a + var_b + c2)).mean((1, 2)), 0.0)
    if j == scales - 1:
      lum = ((2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)).mean((1, 2))
      out = out * (lum * cs) ** weights[j]
    else:
      out = out * cs ** weights[j]
      h, w = a.shape[1] // 2 * 2, a.shape[2] // 2 * 2
      a = a[:, :h, :w].reshape(len(a), h // 2, 2, w // 2, 2).mean((2, 4))
      b = b[:, :h, :w].reshape(len(b), h // 2, 2, w // 2, 2).mean((2, 4))
  return out


def quality(recon, ref) -> dict:
  recon = np.clip(np.asarray(recon, np.float32).reshape(ref.shape), 0.0, 1.0)
  return {"psnr": float(metrics.psnr(recon, ref).mean()), "ms_ssim": float(ms_ssim(recon, ref).mean())}


def point(method: str, setting: str, split: str, nbytes, recon, ref, **extra) -> dict:
  nbytes = float(np.mean(nbytes))
  return {"method": method, "setting": setting, "split": split, "bytes": nbytes,
          "bpp": nbytes * 8 / PIXELS, **quality(recon, ref), **extra}


# ---- ours --------------------------------------------------------------------------

def rd_config(args, epochs: int, init_step: float | None = None,
              transform: str | None = None):
  """The rate_distortion config of `args`; init_step: the PCA start's step (default the
  first of --init-step); transform: the analysis/synthesis transform instead of
  --transform (the PCA start and the logits output apply to the dense MLP only)."""
  transform = transform or args.transform
  if init_step is None:
    init_step = args.init_step[0] if isinstance(args.init_step, (list, tuple)) else args.init_step
  cfg = configs.set_offline_training(configs.get_preset("default"), learning_rate=args.lr,
                                    batch_size=args.batch_size, epochs=epochs)
  cfg.seed = args.seed
  cfg.model.family = "rate_distortion"
  cfg.model.network = args.network
  cfg.model.widths = tuple(args.widths)
  cfg.model.channels = tuple(args.channels)
  cfg.model.latent_dim = args.latent
  # dense: logits out (sigmoid); gdn: linear out, as Ballé's (a sigmoid there saturates
  # in the first steps and its MSE gradient vanishes). The distortion is MSE in [0, 1].
  linear = transform == "gdn" or args.output == "linear"
  cfg.model.recon_loss = "mse" if linear else "bce"
  linear_dense = transform == "dense" and args.network == "mlp" and not args.widths
  cfg.model.rd_init = args.init if linear_dense else "random"
  cfg.model.rd_init_step = init_step
  cfg.model.rd_quantization = args.quantization
  cfg.model.rd_transform = transform
  cfg.model.rd_channels = args.rd_channels
  cfg.model.rd_latent_channels = args.latent_channels
  cfg.model.rd_kernel = args.kernel
  cfg.model.rd_prior = args.prior
  cfg.model.rd_hyper_dim = args.hyper_dim
  cfg.model.rd_hyper_widths = tuple(args.hyper_widths)
  cfg.objective.rd_distortion = "mse"
  return cfg


def _timed(fn, items) -> float:
  """Median seconds of fn(item) over items."""
  times = []
  for item in items:
    t0 = time.perf_counter()
    fn(item)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def ours(args, train, val, test):
  points, codecs = [], {}
  steps = list(args.init_step)
  for epochs, step in itertools.product(args.epochs, steps):
    t0 = time.time()
    runs = vmap_trials.fit_trials(rd_config(args, epochs, step),
                                  [{"objective.rd_lambda": lam} for lam in args.lambdas],
                                  train_data=train)
    train_s = time.time() - t0
    for lam, run in zip(args.lambdas, runs):
      if run.error:
        print(f"lambda {lam}: {run.error}")
        continue
      codec = Codec.from_trained(run.trained)
      setting = f"lambda={lam:g}, {epochs} ep" + (f", step {step:g}" if len(steps) > 1 else "")
      codecs[setting] = codec
      for split, data in (("val", val), ("test", test)):
        data_bytes = codec.bytes_per_example(data.x)
        points.append(point("ours", setting, split, data_bytes, codec.reconstruct(data.x),
                            data.x, train_s=train_s, lam=lam, epochs=epochs, init_step=step,
                            prior=args.prior))
      images = test.x[:args.timing_images]
      blobs = [codec.compress(x[None]) for x in images]
      points[-1]["encode_ms"] = 1e3 * _timed(lambda x: codec.compress(x[None]), images)
      points[-1]["decode_ms"] = 1e3 * _timed(codec.decompress, blobs)
      assert all(np.array_equal(codec.decompress(b), codec.reconstruct(x[None]))
                 for b, x in zip(blobs[:20], images[:20]))
  return points, codecs


RC = "ours, rate-controlled"


def rate_controlled(codecs: dict, val, test, timing_images: int):
  """Points of per-image rate control over every trained codec (`RateControlledCodec`):
  at each budget, each image is coded by the codec with its smallest error among those
  whose file (1 byte naming the codec + its stream) fits the budget. Nothing is chosen on
  test: the encoder's per-image choice is part of the codec, as a JPEG encoder's search
  for a quality that meets a file size is. Images that no codec fits take their
  smallest file and are counted in `over_budget`."""
  names = list(codecs)
  rc = RateControlledCodec([codecs[n] for n in names])
  points = []
  for budget in BUDGETS:
    for split, data in (("val", val), ("test", test)):
      choice, nbytes, recon = rc.choose(data.x, budget, overflow="smallest")
      ks, counts = np.unique(choice, return_counts=True)
      points.append(point(RC, f"<= {budget} B per image", split, nbytes, recon, data.x,
                          budget=budget, over_budget=float(np.mean(nbytes > budget)),
                          max_bytes=int(nbytes.max()),
                          codec_use={names[k]: int(n) for k, n in zip(ks, counts)}))
    images = test.x[:timing_images]
    files = rc.compress(images, budget, overflow="smallest")
    points[-1]["encode_ms"] = 1e3 * _timed(
        lambda x, b=budget: rc.compress(x[None], b, overflow="smallest"), images)
    points[-1]["decode_ms"] = 1e3 * _timed(lambda f: rc.decompress([f]), files)
    assert np.array_equal(rc.decompress(files),
                          rc.reconstruct(images, budget, overflow="smallest"))
  return points, rc


# ---- baselines ---------------------------------------------------------------------

def pca(args, train, val, test):
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  flat = lambda d: d.x.reshape(len(d.x), -1)
  points, coders = [], {}
  for k in args.pca_components:
    p = PCA(k, random_state=args.seed).fit(flat(train))
    z_train = p.transform(flat(train))
    for bits in args.pca_bits:
      q = compress.UniformQuantizer(bits).fit(z_train, 0.001)
      setting = f"{k} comp, {bits} bit"
      coders[setting] = (p, q)
      nbytes = compress.packed_bytes(k, bits)
      for split, data in (("val", val), ("test", test)):
        recon = p.inverse_transform(q.round_trip(p.transform(flat(data))))
        points.append(point("PCA", setting, split, nbytes, recon, data.x))
      images = flat(test)[:args.timing_images]
      points[-1]["encode_ms"] = 1e3 * _timed(lambda x: q.pack(q.quantize(p.transform(x[None]))[0][0]), images)
      blobs = [q.pack(q.quantize(p.transform(x[None]))[0][0]) for x in images]
      points[-1]["decode_ms"] = 1e3 * _timed(
          lambda b: p.inverse_transform(q.dequantize(q.unpack(b, k)[0])), blobs)
  return points, coders


def pca_coder(setting: str, train, seed: int):
  """(PCA, quantiser) of a setting "<k> comp, <bits> bit" fitted as `pca` fits it."""
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  k, bits = int(setting.split()[0]), int(setting.split()[2])
  flat = train.x.reshape(len(train.x), -1)
  p = PCA(k, random_state=seed).fit(flat)
  return p, compress.UniformQuantizer(bits).fit(p.transform(flat), 0.001)


def pillow_encode(image, fmt: str, quality_: int) -> bytes:
  """The JPEG (optimised Huffman tables) or WebP (method 6) file of one grey image
  (28, 28, 1) in [0, 1]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.clip(np.round(np.asarray(image)[..., 0] * 255.0), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  if fmt == "JPEG":
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(quality_), optimize=True)
  else:
    Image.fromarray(pixels).save(buf, format="WEBP", quality=int(quality_), method=6)
  return buf.getvalue()


def pillow_round_trip(image, fmt: str, quality_: int):
  """(decoded (28, 28, 1) in [0, 1], file bytes) of one grey image through Pillow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  data = pillow_encode(image, fmt, quality_)
  decoded = Image.open(io.BytesIO(data)).convert("L")  # WebP decodes to RGB
  return np.asarray(decoded, np.float32)[..., None] / 255.0, data


def pillow(fmt: str, qualities, val, test, timing_images: int):
  points = []
  for q in qualities:
    for split, data in (("val", val), ("test", test)):
      outs = [pillow_round_trip(x, fmt, q) for x in data.x]
      extra = {}
      if fmt == "JPEG":
        extra["scan_bytes"] = float(np.mean([compress.jpeg_scan_bytes(o[1]) for o in outs]))
      points.append(point(fmt, f"quality {q}", split, [len(o[1]) for o in outs],
                          np.stack([o[0] for o in outs]), data.x, **extra))
    from PIL import Image  # pylint: disable=g-import-not-at-top
    images = test.x[:timing_images]
    points[-1]["encode_ms"] = 1e3 * _timed(lambda x: pillow_encode(x, fmt, q), images)
    blobs = [pillow_encode(x, fmt, q) for x in images]
    points[-1]["decode_ms"] = 1e3 * _timed(
        lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("L")), blobs)
  return points


def compressai_status() -> str:
  """'' when CompressAI imports, else why it does not."""
  try:
    import compressai.models  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return ""


# ---- selection, figures, main ------------------------------------------------------

def select(points, method: str, budget: int):
  """The test point of the method's setting with the best validation PSNR among those
  whose mean validation bytes fit the budget (None if none fits)."""
  val = [p for p in points if p["method"] == method and p["split"] == "val"
         and p["bytes"] <= budget]
  if not val:
    return None
  best = max(val, key=lambda p: p["psnr"])
  return next(p for p in points if p["method"] == method and p["split"] == "test"
              and p["setting"] == best["setting"])


def pareto(points):
  """Test points not beaten in both bytes and PSNR, by bytes."""
  pts = sorted(points, key=lambda p: (p["bytes"], -p["psnr"]))
  front, best = [], -np.inf
  for p in pts:
    if p["psnr"] > best:
      front.append(p)
      best = p["psnr"]
  return front


def figure(points, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  for method, style in (("ours", "o-"), (RC, "D:"), ("PCA", "s--"), ("JPEG", "^-"),
                        ("WEBP", "v-")):
    test = [p for p in points if p["method"] == method and p["split"] == "test"]
    front = pareto(test) if method in ("PCA", "ours") else sorted(test, key=lambda p: p["bytes"])
    if not front:
      continue
    label = {"WEBP": "WebP", "PCA": "PCA (Pareto front)", "ours": "ours (Pareto front)",
             RC: "ours, per-image cap (32/64/128 B)"}.get(method, method)
    for ax, key in zip(axes, ("psnr", "ms_ssim")):
      ax.plot([p["bytes"] for p in front], [p[key] for p in front], style, ms=3, label=label)
  for ax, key in zip(axes, ("PSNR (dB)", "MS-SSIM (3 scales)")):
    for b in BUDGETS:
      ax.axvline(b, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(10, 1000)
    ax.set_xlabel("bytes per image (whole file; PCA: packed bits)")
    ax.set_ylabel(key)
    sec = ax.secondary_xaxis("top", functions=(lambda b: b * 8 / PIXELS, lambda r: r * PIXELS / 8))
    sec.set_xlabel("bits per pixel")
    ax.grid(alpha=0.3)
  for budget, goal in GOALS.items():
    axes[0].plot([budget], [goal], "k*", ms=10)
  axes[0].legend(fontsize=8)
  fig.suptitle("MNIST t10k test (2,000 images): rate-distortion")
  fig.tight_layout()
  path = out / "rate_distortion.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def image_grid(rows, labels, out):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = rows[0].shape[0]
  fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95))
  for i, (row, label) in enumerate(zip(rows, labels)):
    for j in range(n):
      ax = axes[i, j]
      ax.imshow(np.clip(row[j].reshape(28, 28), 0, 1), cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
  fig.tight_layout()
  path = out / "decoded_grid.png"
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def decoded_rows(chosen, codecs, pca_coders, train, test, seed: int, n: int = 8, rc=None):
  x = test.x[:n]
  rows, labels = [x], ["original"]
  for budget in BUDGETS:
    for method in ("ours", RC, "PCA", "JPEG", "WEBP"):
      p = chosen.get((method, budget))
      if p is None:
        continue
      if method == RC:
        recon = rc.reconstruct(x, p["budget"], overflow="smallest")
      elif method == "ours":
        recon = codecs[p["setting"]].reconstruct(x)
      elif method == "PCA":
        if p["setting"] not in pca_coders:  # reused points: refit this one setting
          pca_coders[p["setting"]] = pca_coder(p["setting"], train, seed)
        pc, q = pca_coders[p["setting"]]
        recon = pc.inverse_transform(q.round_trip(pc.transform(x.reshape(n, -1))))
      else:
        qual = int(p["setting"].split()[-1])
        recon = np.stack([pillow_round_trip(im, method, qual)[0] for im in x])
      rows.append(np.asarray(recon))
      name = "ours, capped" if method == RC else method
      labels.append(f"{name} <={budget} B\n({p['bytes']:.0f} B)")
  return rows, labels


def reused_baselines(path, args):
  """The PCA / JPEG / WebP points of an earlier result.json, checked to share the seed
  and validation size of this run."""
  import json  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from ae_jax.errors import DataError  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"--baselines-from {path}: no such result.json")
  old = json.loads(path.read_text())
  split = old.get("split", {})
  if split != {"seed": args.seed, "val_size": args.val_size, "smoke": args.smoke}:
    raise DataError(f"--baselines-from {path} was made on another split ({split}); rerun "
                    "the baselines with the same --seed and --val-size")
  return [p for p in old["points"] if p["method"] != "ours"]


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  train, val, test = splits(args)
  points, codecs, pca_coders, ours_s, rc = [], {}, {}, 0.0, None
  if "ours" in args.methods:
    t0 = time.time()
    points, codecs = ours(args, train, val, test)
    ours_s = time.time() - t0
    if codecs:
      rc_points, rc = rate_controlled(codecs, val, test, args.timing_images)
      points += rc_points
  if args.baselines_from:
    points += reused_baselines(args.baselines_from, args)
  else:
    if "PCA" in args.methods:
      pca_points, pca_coders = pca(args, train, val, test)
      points += pca_points
    for fmt, qualities in (("JPEG", args.jpeg_qualities), ("WEBP", args.webp_qualities)):
      if fmt in args.methods:
        points += pillow(fmt, qualities, val, test, args.timing_images)
  cai = compressai_status()
  methods = ("ours", RC, "PCA", "JPEG", "WEBP")
  chosen = {(m, b): select(points, m, b) for m in methods for b in BUDGETS}
  rows = []
  for (method, budget), p in chosen.items():
    row = {"budget (B)": budget, "method": method}
    if p is not None:
      row.update({"setting (chosen on val)": p["setting"], "test bytes": p["bytes"],
                  "bpp": p["bpp"], "PSNR (dB)": p["psnr"], "MS-SSIM": p["ms_ssim"]})
    rows.append(row)
  goals = []
  for method, budget in itertools.product(("ours", RC), GOALS):
    goal, p = GOALS[budget], chosen[(method, budget)]
    psnr = None if p is None else p["psnr"]
    goals.append({"method": method, "goal": f"<= {budget} B: PSNR >= {goal} dB",
                  "test PSNR": psnr, "test bytes": None if p is None else p["bytes"],
                  "test max bytes": None if p is None else p.get("max_bytes"),
                  "met": psnr is not None and psnr >= goal and p["bytes"] <= budget})
  capped = [{"budget (B)": p["budget"], "split": p["split"], "mean bytes": p["bytes"],
             "max bytes": p["max_bytes"], "images over budget": p["over_budget"],
             "PSNR (dB)": p["psnr"], "MS-SSIM": p["ms_ssim"],
             "encode ms/image": p.get("encode_ms"), "decode ms/image": p.get("decode_ms"),
             "codecs used": len(p["codec_use"])}
            for p in points if p["method"] == RC]
  timing = [{"method": p["method"], "setting": p["setting"], "encode ms/image": p.get("encode_ms"),
             "decode ms/image": p.get("decode_ms")}
            for p in (chosen[(m, 64)] for m in methods) if p is not None]
  curve = [{k: p.get(k) for k in ("method", "setting", "bytes", "bpp", "psnr", "ms_ssim")}
           for p in points if p["split"] == "test" and p["method"] == "ours"]
  fig_path = figure(points, out)
  grid_path = image_grid(*decoded_rows(chosen, codecs, pca_coders, train, test, args.seed,
                                      rc=rc), out)
  _io.write_results(
      out, {"points": points, "compressai": cai or "ok", "ours_seconds": ours_s,
            "prior": args.prior,
            "split": {"seed": args.seed, "val_size": args.val_size, "smoke": args.smoke},
            "baselines_from": args.baselines_from,
            "figures": [str(fig_path), str(grid_path)]},
      {"Chosen settings per budget (test, 2,000 images)": rows, "Goals": goals,
       "Per-image rate control over every trained codec (no choice on test)": capped,
       "Per-image times at the 64 B setting (single image, CPU)": timing,
       "Our curve (test)": curve,
       "CompressAI": [{"status": cai or "imports (its training is not part of this script)"}]},
      title="Rate-distortion on MNIST t10k")
  print((out / "table.md").read_text())
  return points


if __name__ == "__main__":
  main()
