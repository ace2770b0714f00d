"""Image denoising: conv denoising autoencoders against classical filters on MNIST.

For Gaussian noise (sigma 0.2, 0.4, 0.5, clipped to [0, 1]) and 20% salt-and-pepper noise,
`spatial_denoising` autoencoders are compared on the 2,000 test images with the noisy
input, a median filter and, for Gaussian noise, non-local means (scikit-image, optional
extra). Protocol: 1,000 of the 8,000 training images are held out for validation and the
models train on the other 7,000. For each noise, the filters' settings are chosen on 100
noisy validation images and the autoencoder's training budget (epochs and batch size, one
model per entry of --dae-grid) on the 1,000 noisy validation images; only the chosen
setting of each method is then scored on the test images, once.
Reports mean per-image PSNR and SSIM; draws clean / noisy / each method.

  python -m experiments.denoise [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time

import numpy as np

from ae_jax import results
from ae_jax.applications import denoise, metrics
from experiments import _protocol

NAME = "denoise"
NOISES = (("gaussian", 0.2), ("gaussian", 0.4), ("gaussian", 0.5), ("salt_pepper", 0.2))
# Best classical PSNR measured for the issue on this split, and the margin the goal asks.
ANCHORS = {("gaussian", 0.2): ("NL-means", 20.49, 3.0), ("gaussian", 0.4): ("median 3x3", 15.56, 5.0),
           ("gaussian", 0.5): ("median", 14.22, 5.0), ("salt_pepper", 0.2): ("median 3x3", 18.33, 5.0)}
MEDIAN_GRID = ({"size": 3}, {"size": 5})
NLM_GRID = tuple({"h": h, "patch_size": p, "patch_distance": p}
                 for h in (0.15, 0.2, 0.3) for p in (3, 5))
SHOW = 6


def label(noise: str, level: float) -> str:
  return f"Gaussian σ={level}" if noise == "gaussian" else f"salt & pepper {level:.0%}"


def have_skimage() -> bool:
  try:
    import skimage  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return True
  except ImportError:
    return False


def psnr_score(clean, estimate):
  return metrics.psnr(clean, np.clip(estimate, 0, 1))


def run_noise(noise, level, index, train, val, test, args, settings):
  """All methods for one noise, each chosen on validation: (test rows, validation rows,
  images to show)."""
  seed = 1000 * args.seed + index
  noisy = denoise.corrupt_fixed(test.x, noise, level, seed + 100)
  val_noisy = denoise.corrupt_fixed(val.x, noise, level, seed + 300)
  tune_clean, tune_noisy = val.x[:settings["tune_images"]], val_noisy[:settings["tune_images"]]
  outputs = {"noisy input": (noisy, "", 0.0)}
  t0 = time.time()
  med, _ = denoise.choose_setting(denoise.median_filter, MEDIAN_GRID, tune_clean, tune_noisy,
                                  psnr_score)
  outputs["median"] = (denoise.median_filter(noisy, **med), f"{med['size']}x{med['size']}",
                       time.time() - t0)
  if have_skimage() and noise == "gaussian":
    t0 = time.time()
    nlm, _ = denoise.choose_setting(denoise.nl_means, NLM_GRID, tune_clean, tune_noisy,
                                    psnr_score)
    outputs["NL-means"] = (denoise.nl_means(noisy, **nlm),
                           f"h={nlm['h']}, patch {nlm['patch_size']}", time.time() - t0)
  trained, seconds, val_rows = _protocol.fit_budgets(
      settings["dae_grid"],
      lambda epochs, batch_size: denoise.denoiser_config(
          noise, level, channels=settings["channels"], latent_dim=settings["latent_dim"],
          epochs=epochs, batch_size=batch_size),
      train, lambda model: np.mean(psnr_score(val.x, model.reconstruct(val_noisy))),
      "validation PSNR", args.seed, first={"noise": label(noise, level)})
  chosen = next(r for r in val_rows if r["chosen"])
  outputs["conv DAE"] = (trained.reconstruct(noisy),
                         f"{chosen['epochs']} epochs, batch {chosen['batch']}", seconds)
  rows = []
  for method, (images, setting, seconds) in outputs.items():
    images = np.clip(images, 0, 1)
    rows.append({"noise": label(noise, level), "method": method, "setting": setting,
                 "psnr": float(metrics.psnr(test.x, images).mean()),
                 "ssim": float(metrics.ssim(test.x, images).mean()),
                 "seconds": round(seconds, 1)})
  shown = {"clean": test.x[:SHOW], **{m: np.clip(v[0][:SHOW], 0, 1) for m, v in outputs.items()}}
  return rows, val_rows, shown


def goal_row(noise, level, rows):
  anchor_name, anchor, margin = ANCHORS[(noise, level)]
  by_method = {r["method"]: r["psnr"] for r in rows}
  classical = {m: v for m, v in by_method.items() if m in ("median", "NL-means")}
  best_name = max(classical, key=classical.get)
  dae = by_method["conv DAE"]
  return {"noise": label(noise, level),
          "best classical here": f"{best_name} {classical[best_name]:.2f}",
          "issue anchor": f"{anchor_name} {anchor:.2f}",
          "goal (anchor + margin)": anchor + margin, "conv DAE": dae,
          "gain over best classical here": dae - classical[best_name],
          "goal met": bool(dae >= anchor + margin)}


def draw(shown_by_noise: dict, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  methods = list(next(iter(shown_by_noise.values())))
  cols = len(shown_by_noise)
  fig, axes = plt.subplots(len(methods), cols, figsize=(3.2 * cols, 0.75 * len(methods) + 0.6),
                           squeeze=False)
  for c, (title, shown) in enumerate(shown_by_noise.items()):
    for r, method in enumerate(methods):
      ax = axes[r, c]
      if method in shown:
        ax.imshow(np.concatenate(list(shown[method][..., 0]), 1), cmap="gray", vmin=0, vmax=1)
      else:
        ax.text(0.5, 0.5, "not run for this noise", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
      ax.set_xticks([])
      ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(method, fontsize=8, rotation=0, ha="right", va="center")
      if r == 0:
        ax.set_title(title, fontsize=9)
  fig.suptitle("MNIST test digits: clean, noisy and each denoiser", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None):
  p = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k")
  _protocol.add_budget_arguments(
      p, [(4, 16), (12, 64)], "autoencoder training budgets; the best on validation is kept")
  args = p.parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(160, 16))
  settings = {"channels": (32, 64), "latent_dim": 784, "dae_grid": args.dae_grid,
              "tune_images": 100, "val_size": args.val_size}
  if args.smoke:
    settings.update(channels=(4, 8), dae_grid=[(1, 32)], tune_images=8, val_size=32)
  train, val = _protocol.carve_validation(train, settings["val_size"])
  if not have_skimage():
    print("note: scikit-image is not installed (pip install 'ae_jax[compare]'); "
          "the NL-means column is skipped")
  t_start = time.time()
  rows, val_rows, goals, shown = [], [], [], {}
  for i, (noise, level) in enumerate(NOISES[:1] if args.smoke else NOISES):
    noise_rows, noise_val, shown[label(noise, level)] = run_noise(
        noise, level, i, train, val, test, args, settings)
    rows += noise_rows
    val_rows += noise_val
    goals.append(goal_row(noise, level, noise_rows))
    print(results.markdown_table(noise_val), results.markdown_table(noise_rows), flush=True)
  figure = draw(shown, out / "denoise_grid.png")
  seconds = round(time.time() - t_start, 1)
  record = _protocol.protocol(
      args.data,
      _protocol.carved_splits(len(train), len(val), len(test)),
      tuned=[f"median size {[g['size'] for g in MEDIAN_GRID]} and NL-means h / patch "
             f"(grid of {len(NLM_GRID)}): on {settings['tune_images']} noisy validation "
             "images, per noise",
             f"DAE epochs:batch among {[f'{e}:{b}' for e, b in settings['dae_grid']]}: on "
             f"the {len(val)} noisy validation images, per noise"],
      untuned=[f"DAE architecture spatial_denoising channels {settings['channels']}, "
               f"latent {settings['latent_dim']}, Adam 2e-3 cosine"],
      budget={"epochs": "see the validation table", "wall_seconds": seconds})
  result = {"data": args.data, "smoke": args.smoke, "settings": settings, "rows": rows,
            "validation": val_rows, "goals": goals, "protocol": record,
            "figure": figure.name, "seconds": seconds}
  results.write_results(out, result, {"Protocol": _protocol.rows(record),
                                      "Validation PSNR of each DAE budget": val_rows,
                                      "Test PSNR / SSIM (mean per image)": rows,
                                      "Goals": goals}, title="Image denoising (MNIST)",
                        echo=["Goals"])
  return result


if __name__ == "__main__":
  main()
