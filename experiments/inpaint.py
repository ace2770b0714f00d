"""Inpainting: fill a 10x10 hole inside the central 20x20 of MNIST test digits.

A `spatial_denoising` autoencoder is trained with the `block` corruption (block_size 10,
block_region 20: one zeroed square per image, a fresh place every step) and fills the
holes of the test images; the known pixels are kept. Baselines: the mean of the image's
known pixels, the training mean image, and biharmonic inpainting (scikit-image, optional
extra). Reports PSNR over the hole pixels only, the mean over images.

Protocol: 1,000 of the 8,000 training images are held out for validation; the models
train on the other 7,000 (and the mean image is theirs). The training budget (epochs and
batch size, one model per entry of --dae-grid) is chosen by hole PSNR on the validation
images with their own fixed holes; the test images are scored once, with the chosen model.

  python -m experiments.inpaint [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time

import numpy as np

from ae_jax import figures, results
from ae_jax.applications import denoise, inpaint, metrics
from experiments import _protocol

NAME = "inpaint"
BLOCK, REGION = 10, 20
ANCHORS = {"biharmonic": 8.84, "mean fill": 6.62}
GOAL = 12.0
SHOW = 8


def main(argv=None):
  p = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k")
  _protocol.add_budget_arguments(
      p, [(3, 16), (6, 16)], "training budgets; the best hole PSNR on validation is kept")
  args = p.parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(160, 16))
  channels, grid, val_size = ((4, 8), [(1, 32)], 32) if args.smoke else (
      (32, 64), args.dae_grid, args.val_size)
  train, val = _protocol.carve_validation(train, val_size)
  t_start = time.time()
  masks = inpaint.hole_masks(len(test), test.x.shape[1:], BLOCK, REGION, 1000 * args.seed + 7)
  x_cut = inpaint.cut(test.x, masks)
  val_masks = inpaint.hole_masks(len(val), val.x.shape[1:], BLOCK, REGION,
                                 1000 * args.seed + 8)
  val_cut = inpaint.cut(val.x, val_masks)
  fills = {"zero (the cut image)": (x_cut, ""),
           "mean fill": (inpaint.mean_fill(x_cut, masks), "mean of the image's known pixels"),
           "mean image": (inpaint.paste(x_cut, np.broadcast_to(train.x.mean(0), x_cut.shape),
                                        masks), "training mean image")}
  try:
    fills["biharmonic"] = (inpaint.biharmonic(x_cut, masks), "scikit-image")
  except ImportError:
    print("note: scikit-image is not installed (pip install 'ae_jax[compare]'); "
          "the biharmonic baseline is skipped")
  trained, train_seconds, val_rows = _protocol.fit_budgets(
      grid,
      lambda epochs, batch_size: denoise.denoiser_config(
          "block", 0.0, channels=channels, epochs=epochs, batch_size=batch_size,
          block_size=BLOCK, block_region=REGION),
      train,
      lambda model: metrics.masked_psnr(
          val.x, inpaint.model_fill(model, val_cut, val_masks), val_masks).mean(),
      "validation hole PSNR (dB)", args.seed)
  chosen = next(r for r in val_rows if r["chosen"])
  epochs = chosen["epochs"]
  fills["conv DAE"] = (inpaint.model_fill(trained, x_cut, masks),
                       f"spatial_denoising {channels}, {epochs} epochs, batch "
                       f"{chosen['batch']} ({train_seconds:.0f} s)")
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
  seconds = round(time.time() - t_start, 1)
  record = _protocol.protocol(
      args.data,
      _protocol.carved_splits(len(train), len(val), len(test), val_note="one fixed hole each",
                              test_note="one fixed hole each, scored once"),
      tuned=[f"DAE epochs:batch among {[f'{e}:{b}' for e, b in grid]}: validation hole PSNR"],
      untuned=[f"spatial_denoising channels {channels}, latent 784, Adam 2e-3 cosine; "
               "the baselines have no settings"],
      budget={"epochs": epochs, "train_seconds": round(train_seconds, 1),
              "wall_seconds": seconds})
  result = {"data": args.data, "smoke": args.smoke, "epochs": epochs,
            "train_seconds": round(train_seconds, 1), "validation": val_rows, "rows": rows,
            "goals": goals, "protocol": record, "figure": figure.name, "seconds": seconds}
  results.write_results(out, result, {"Protocol": _protocol.rows(record),
                                      "Validation hole PSNR of each training budget": val_rows,
                                      "Test hole PSNR (mean over images)": rows, "Goal": goals},
                        title="Inpainting (MNIST)",
                        echo=["Test hole PSNR (mean over images)", "Goal"])
  return result


if __name__ == "__main__":
  main()
