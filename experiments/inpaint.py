"""Inpainting: fill a 10x10 hole inside the central 20x20 of MNIST test digits.

A `spatial_denoising` autoencoder is trained with the `block` corruption (block_size 10,
block_region 20: one zeroed square per image, a fresh place every step) and fills the
holes of the test images; the known pixels are kept. Baselines: the mean of the image's
known pixels, the training mean image, and biharmonic inpainting (scikit-image, optional
extra). Reports PSNR over the hole pixels only, the mean over images.

  python -m experiments.inpaint [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time

import numpy as np

from ae_jax import figures, fit, results
from ae_jax.applications import denoise, inpaint, metrics

NAME = "inpaint"
BLOCK, REGION = 10, 20
ANCHORS = {"biharmonic": 8.84, "mean fill": 6.62}
GOAL = 12.0
SHOW = 8


def main(argv=None):
  args = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k", epochs=6,
                        batch_size=16).parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(128, 16))
  channels, epochs, batch_size = ((4, 8), 1, 32) if args.smoke else (
      (32, 64), args.epochs, args.batch_size)
  t_start = time.time()
  masks = inpaint.hole_masks(len(test), test.x.shape[1:], BLOCK, REGION, 1000 * args.seed + 7)
  x_cut = inpaint.cut(test.x, masks)
  fills = {"zero (the cut image)": (x_cut, ""),
           "mean fill": (inpaint.mean_fill(x_cut, masks), "mean of the image's known pixels"),
           "mean image": (inpaint.paste(x_cut, np.broadcast_to(train.x.mean(0), x_cut.shape),
                                        masks), "training mean image")}
  try:
    fills["biharmonic"] = (inpaint.biharmonic(x_cut, masks), "scikit-image")
  except ImportError:
    print("note: scikit-image is not installed (pip install 'ae_jax[compare]'); "
          "the biharmonic baseline is skipped")
  cfg = denoise.denoiser_config("block", 0.0, channels=channels, epochs=epochs,
                                batch_size=batch_size, block_size=BLOCK, block_region=REGION)
  cfg.seed = args.seed
  trained, train_seconds = results.timed(fit.fit, cfg, train_data=train, progress=False)
  fills["conv DAE"] = (inpaint.model_fill(trained, x_cut, masks),
                       f"spatial_denoising {channels}, {epochs} epochs ({train_seconds:.0f} s)")
  rows = []
  for name, (images, setting) in fills.items():
    rows.append({"method": name, "setting": setting,
                 "hole PSNR (dB)": float(metrics.masked_psnr(test.x, images, masks).mean()),
                 "hole PSNR pooled (dB)": metrics.pooled_psnr(test.x, images, masks),
                 "whole-image SSIM": float(metrics.ssim(test.x, images).mean())})
  dae = rows[-1]["hole PSNR (dB)"]
  classical = {r["method"]: r["hole PSNR (dB)"] for r in rows
               if r["method"] in ("mean fill", "mean image", "biharmonic")}
  best = max(classical, key=classical.get)
  goals = [{"issue anchor": "biharmonic 8.84, mean fill 6.62",
            "best classical here": f"{best} {classical[best]:.2f}", "goal": GOAL,
            "conv DAE": dae, "goal met": bool(dae >= GOAL)}]
  shown = [test.x[:SHOW], np.where(masks[:SHOW] > 0, 0.5, x_cut[:SHOW])]
  labels = ["original", "hole (gray)"]
  for name in ("mean fill", "biharmonic", "conv DAE"):
    if name in fills:
      shown.append(fills[name][0][:SHOW])
      labels.append(name)
  figure = figures.image_rows(shown, labels, out / "inpaint_grid.png",
                              title=f"{BLOCK}x{BLOCK} holes inside the central {REGION}x{REGION}")
  result = {"data": args.data, "smoke": args.smoke, "epochs": epochs,
            "train_seconds": round(train_seconds, 1), "rows": rows, "goals": goals,
            "figure": figure.name, "seconds": round(time.time() - t_start, 1)}
  results.write_results(out, result, {"Test hole PSNR (mean over images)": rows, "Goal": goals},
                        title="Inpainting (MNIST)", echo=True)
  return result


if __name__ == "__main__":
  main()
