"""Compression: quantised autoencoder latents and VQ-VAE codebook indices against PCA
coefficients and JPEG, as PSNR against honest bytes per image.

Protocol: 1,000 of the 8,000 training images are held out for validation; models, PCA
and the quantisers' ranges are fitted on the other 7,000. Every operating point (latent
size and bits, PCA components, JPEG quality, VQ-VAE) is scored on the validation and the
test images; the best point of each method within a byte budget is chosen on validation
(its validation bytes and PSNR) and only its test figure is reported for that budget.

  python -m experiments.compression            # the CPU-sized run (see RESULTS_applications_b.md)
  python -m experiments.compression --epochs 100
  python -m experiments.compression --smoke    # seconds, for CI
"""

import time

import numpy as np

from ae_jax import configs, data as data_lib
from ae_jax.applications import compression as compress, metrics
from ae_jax.fit import fit
from ae_jax import results as _io
from experiments import _protocol

NAME = "compression"
GOALS = {64: 26.0, 128: 29.0}
ANCHORS = {64: "PCA 4 bit 24.02, JPEG scan data 22.35", 128: "PCA 4 bit 27.54, JPEG scan data 27.08"}


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data", default="mnist_t10k",
                 help="a source with 'train' and 'test' splits: mnist_t10k or tfds:mnist")
  p.add_argument("--latents", type=int, nargs="+", default=[32, 128],
                 help="latent sizes of the MLP autoencoders")
  p.add_argument("--widths", type=int, nargs="+", default=[512, 256])
  p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
  p.add_argument("--quantile", type=float, default=0.001,
                 help="tail share clipped from each latent range when fitting the quantiser")
  p.add_argument("--vq", nargs="*", default=["128:4:256"],
                 help="VQ-VAEs as latent_dim:code_dim:num_codes")
  p.add_argument("--epochs", type=int, default=15)
  p.add_argument("--batch-size", type=int, default=100)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--pca-components", type=int, nargs="+", default=[16, 32, 64, 96, 128, 192, 256])
  p.add_argument("--pca-bits", type=int, default=4)
  p.add_argument("--jpeg-qualities", type=int, nargs="+",
                 default=[1, 5, 10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95])
  p.add_argument("--budgets", type=int, nargs="+", default=[64, 128])
  p.add_argument("--val-size", type=int, default=1000,
                 help="training images held out for validation")
  args = p.parse_args(argv)
  if args.smoke:
    args.latents, args.widths, args.bits, args.epochs = [8], [32], [4, 8], 1
    args.vq, args.pca_components, args.jpeg_qualities = ["8:2:16"], [8, 16], [10, 50]
    args.val_size = 100
  return args


def ae_config(args, latent_dim: int, vq=None):
  cfg = configs.get_preset("default")
  cfg.seed = args.seed
  cfg.data.val_fraction = 0.0
  cfg.model.family = "ae" if vq is None else "vqvae"
  cfg.model.widths = tuple(args.widths)
  cfg.model.latent_dim = latent_dim
  cfg.model.recon_loss = "bce"
  if vq is not None:
    cfg.model.code_dim, cfg.model.num_codes = vq
  cfg.optim.learning_rate = args.lr
  cfg.train.batch_size = args.batch_size
  cfg.train.num_epochs = args.epochs
  cfg.train.parallel = "jit"
  cfg.train.figures = False
  cfg.train.log_every = cfg.train.eval_every = cfg.train.checkpoint_every = 10 ** 9
  return cfg


def quality(recon, test) -> dict:
  recon = np.clip(np.asarray(recon, np.float32).reshape(test.shape), 0.0, 1.0)
  return {"PSNR (dB)": float(metrics.psnr(recon, test).mean()),
          "SSIM": float(metrics.ssim(recon, test).mean())}


def val_quality(recon, val) -> dict:
  recon = np.clip(np.asarray(recon, np.float32).reshape(val.shape), 0.0, 1.0)
  return {"val PSNR (dB)": float(metrics.psnr(recon, val).mean())}


def autoencoder_points(args, train, val, test, recons):
  points = []
  for latent in args.latents:
    t0 = time.time()
    model = fit(ae_config(args, latent), train_data=train, progress=False)
    z_train, z_val, z_test = model.encode(train.x), model.encode(val.x), model.encode(test.x)
    train_s = time.time() - t0
    points.append({"method": "AE, float32 latent", "setting": f"latent {latent}",
                   "bytes/image": 4 * latent, "val bytes/image": 4 * latent,
                   **val_quality(model.decode(z_val), val.x),
                   **quality(model.decode(z_test), test.x)})
    for bits in args.bits:
      quant = compress.UniformQuantizer(bits).fit(z_train, args.quantile)
      recon = model.decode(quant.round_trip(z_test))
      key = f"AE latent {latent}, {bits} bit"
      recons[key] = recon
      size = quant.bytes_per_image(latent)
      points.append({"method": f"AE latent {latent}, uniform", "setting": f"{bits} bit",
                     "bytes/image": size, "val bytes/image": size,
                     **val_quality(model.decode(quant.round_trip(z_val)), val.x),
                     **quality(recon, test.x), "train s": train_s})
    print(f"AE latent {latent}: {train_s:.0f}s", flush=True)
  for spec in args.vq:
    latent, code_dim, num_codes = (int(v) for v in spec.split(":"))
    t0 = time.time()
    model = fit(ae_config(args, latent, (code_dim, num_codes)), train_data=train,
                progress=False)
    train_s = time.time() - t0
    recon, payloads, idx = vq_round_trip(model, test.x, num_codes)
    key = f"VQ-VAE {idx.shape[1]}x{num_codes} codes"
    recons[key] = recon
    points.append({"method": "VQ-VAE indices", "setting": f"{idx.shape[1]} indices of "
                   f"{num_codes} codes (latent {latent}, code dim {code_dim})",
                   "bytes/image": len(payloads[0]), "val bytes/image": len(payloads[0]),
                   **val_quality(vq_round_trip(model, val.x, num_codes)[0], val.x),
                   **quality(recon, test.x), "train s": train_s})
    assert len(payloads[0]) == compress.vq_bytes_per_image(idx.shape[1], num_codes)
    print(f"VQ-VAE {spec}: {train_s:.0f}s", flush=True)
  return points


def vq_round_trip(model, x, num_codes: int):
  """Images decoded from their bit-packed codebook indices: (recon, payloads, indices)."""
  idx = np.asarray(model.model.apply(model.params, x, method=model.model.encode_indices))
  payloads = [compress.pack_bits(row, compress.index_bits(num_codes)) for row in idx]
  decoded = np.stack([compress.unpack_bits(p, idx.shape[1], compress.index_bits(num_codes))
                      for p in payloads])
  z = np.asarray(model.model.apply(model.params, decoded,
                                   method=model.model.indices_to_latent))
  return model.decode(z), payloads, idx


def pca_points(args, train, val, test, recons):
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  flat_train, flat_test = train.x.reshape(len(train), -1), test.x.reshape(len(test), -1)
  points = []
  for n in args.pca_components:
    n = min(n, flat_train.shape[1], len(flat_train))
    pca = PCA(n, random_state=args.seed).fit(flat_train)
    quant = compress.UniformQuantizer(args.pca_bits).fit(pca.transform(flat_train),
                                                         args.quantile)
    recon = pca.inverse_transform(quant.round_trip(pca.transform(flat_test)))
    recons[f"PCA {n}, {args.pca_bits} bit"] = recon.reshape(test.x.shape)
    val_recon = pca.inverse_transform(quant.round_trip(pca.transform(
        val.x.reshape(len(val), -1))))
    points.append({"method": f"PCA, {args.pca_bits} bit", "setting": f"{n} components",
                   "bytes/image": quant.bytes_per_image(n),
                   "val bytes/image": quant.bytes_per_image(n),
                   **val_quality(val_recon, val.x), **quality(recon, test.x)})
  return points


def jpeg_points(args, val, test, recons):
  points = []
  val_rows = compress.jpeg_curve(val.x, args.jpeg_qualities)
  for row, vrow in zip(compress.jpeg_curve(test.x, args.jpeg_qualities), val_rows):
    recons[f"JPEG q{row['quality']}"] = row["recon"]
    q, vq = quality(row["recon"], test.x), val_quality(vrow["recon"], val.x)
    points.append({"method": "JPEG, whole file", "setting": f"quality {row['quality']}",
                   "bytes/image": row["file_bytes"], "val bytes/image": vrow["file_bytes"],
                   **vq, **q})
    points.append({"method": "JPEG, scan data only", "setting": f"quality {row['quality']}",
                   "bytes/image": row["scan_bytes"], "val bytes/image": vrow["scan_bytes"],
                   **vq, **q})
  return points


def best_within(points, method, budget):
  """The point of `method` with the best validation PSNR among those whose validation
  bytes per image fit `budget` (chosen on validation; the caller reports its test figures)."""
  fits = [p for p in points if p["method"] == method and p["val bytes/image"] <= budget]
  return max(fits, key=lambda p: p["val PSNR (dB)"]) if fits else None


def budget_rows(points, budgets):
  methods = list(dict.fromkeys(p["method"] for p in points if "float32" not in p["method"]))
  rows = []
  for method in methods:
    row = {"method": method}
    for b in budgets:
      best = best_within(points, method, b)
      row[f"PSNR at ≤ {b} B"] = None if best is None else best["PSNR (dB)"]
      row[f"setting at ≤ {b} B"] = "cannot reach" if best is None else (
          f"{best['setting']}, {best['bytes/image']:.1f} B")
    rows.append(row)
  goal = {"method": "goal (issue #5)"}
  for b in budgets:
    goal[f"PSNR at ≤ {b} B"] = GOALS.get(b)
    goal[f"setting at ≤ {b} B"] = ANCHORS.get(b, "")
  return rows + [goal]


def goal_rows(points, budgets):
  rows = []
  for b in budgets:
    if b not in GOALS:
      continue
    learned = [p for p in points if p["val bytes/image"] <= b and (
        p["method"].startswith("AE latent") or p["method"].startswith("VQ"))]
    best = max(learned, key=lambda p: p["val PSNR (dB)"]) if learned else None
    rows.append({"budget": f"≤ {b} B/image", "goal PSNR (dB)": GOALS[b],
                 "best learned codec (chosen on validation)": "none" if best is None else
                 f"{best['method']}, {best['setting']} ({best['bytes/image']:.0f} B)",
                 "PSNR (dB)": None if best is None else best["PSNR (dB)"],
                 "met": None if best is None else best["PSNR (dB)"] >= GOALS[b]})
  return rows


def draw_figures(out, points, recons, test, budgets):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8.5, 5.5))
  methods = list(dict.fromkeys(p["method"] for p in points if "float32" not in p["method"]))
  for method in methods:
    pts = sorted((p["bytes/image"], p["PSNR (dB)"]) for p in points if p["method"] == method)
    style = "--" if method.startswith(("JPEG", "PCA")) else "-"
    ax.plot(*zip(*pts), style, marker="o", ms=4, label=method)
  for b in budgets:
    ax.axvline(b, color="grey", lw=0.8, ls=":")
    if b in GOALS:
      ax.plot([b], [GOALS[b]], marker="*", ms=14, color="gold", mec="k", zorder=5)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("bytes per image (everything the decoder needs besides shared weights)")
  ax.set_ylabel("test PSNR (dB), mean over images")
  ax.set_title("Rate-distortion on MNIST test images (stars: the issue's goals)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "rate_distortion.png", dpi=110)
  plt.close(fig)

  budget = budgets[0]
  chosen = [("original", test.x, None)]
  for method in methods:
    best = best_within(points, method, budget)
    if best is None:
      continue
    key = _recon_key(best)
    if key in recons:
      setting = best["setting"].split(" (")[0]
      chosen.append((f"{method}\n{setting}, {best['bytes/image']:.0f} B, "
                     f"{best['PSNR (dB)']:.1f} dB", recons[key], best))
  cols = 10
  fig, axes = plt.subplots(len(chosen), 1, figsize=(cols * 0.9 + 3.5, 1.1 * len(chosen)))
  for ax, (title, images, _) in zip(np.atleast_1d(axes), chosen):
    strip = np.concatenate([np.clip(images[i, ..., 0], 0, 1) for i in range(cols)], axis=1)
    ax.imshow(strip, cmap="gray", vmin=0, vmax=1)
    ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(f"Test digits at the best setting of each method within {budget} bytes/image")
  fig.tight_layout()
  fig.savefig(out / "reconstructions.png", dpi=110)
  plt.close(fig)


def _recon_key(point) -> str:
  m, s = point["method"], point["setting"]
  if m.startswith("AE latent"):
    return f"{m.split(',')[0]}, {s}"
  if m.startswith("VQ"):
    n, codes = s.split(" indices of ")[0], s.split(" indices of ")[1].split(" codes")[0]
    return f"VQ-VAE {n}x{codes} codes"
  if m.startswith("PCA"):
    return f"PCA {s.split()[0]}, {m.split(', ')[1]}"
  return f"JPEG q{s.split()[-1]}"


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  t_start = time.time()
  train, test = data_lib.load(args.data, "train"), data_lib.load(args.data, "test")
  if args.smoke:
    train, test = train.take(np.arange(700)), test.take(np.arange(100))
  train, val = _protocol.carve_validation(train, args.val_size)
  recons = {}
  timings = {}
  t0 = time.time()
  points = autoencoder_points(args, train, val, test, recons)
  timings["autoencoders"] = time.time() - t0
  t0 = time.time()
  points += pca_points(args, train, val, test, recons)
  timings["pca"] = time.time() - t0
  t0 = time.time()
  points += jpeg_points(args, val, test, recons)
  timings["jpeg"] = time.time() - t0
  draw_figures(out, points, recons, test, args.budgets)
  timings["total"] = time.time() - t_start
  timings["total_cpu"] = time.process_time()
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  settings.update(train_examples=len(train), validation_examples=len(val),
                  test_examples=len(test))
  record = _protocol.protocol(
      args.data,
      _protocol.carved_splits(len(train), len(val), len(test),
                              train_note="fits the models, PCA and the quantisers' ranges",
                              test_note="scored once per operating point"),
      tuned=["the operating point of each method within each byte budget (latent size and "
             "bits, PCA components, JPEG quality): best validation PSNR among the points "
             "whose validation bytes per image fit"],
      untuned=[f"MLP widths {args.widths}, latents {args.latents}, VQ {args.vq}, "
               f"{args.epochs} epochs, Adam {args.lr:g}, batch {args.batch_size}, "
               f"quantile {args.quantile}"],
      budget={"epochs": args.epochs, "wall_seconds": round(timings["total"], 1)})
  result = {"settings": settings, "curves": points, "at_budgets": budget_rows(points, args.budgets),
            "goals": goal_rows(points, args.budgets), "protocol": record, "timings_s": timings}
  _io.write_results(out, result, {
      "Protocol": _protocol.rows(record),
      "Goals: best learned codec within each budget": result["goals"],
      "Best point of each method within each budget (chosen on validation; test PSNR)":
      result["at_budgets"],
      "Every operating point": points}, title="Compression", digits=4)
  print((out / "table.md").read_text())
  print(f"total {timings['total']:.0f}s wall, {timings['total_cpu']:.0f}s CPU; wrote {out}")
  return result


if __name__ == "__main__":
  main()
