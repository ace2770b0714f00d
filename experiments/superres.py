"""Super-resolution 14x14 -> 28x28 on MNIST: a conv autoencoder against classical upsamplers.

Low-resolution images are 2x2 box averages of the test digits. A `spatial_denoising`
autoencoder is trained with the `downsample` corruption (its input is the 14x14 image
repeated to 28x28) and compared with nearest, bicubic and Lanczos upsampling (Pillow) and
the cubic spline of scikit-image (optional extra). Reports mean per-image PSNR and SSIM.

Protocol: 1,000 of the 8,000 training images are held out for validation; the models
train on the other 7,000. The training budget (epochs and batch size, one model per entry
of --dae-grid) is chosen by PSNR on the validation images; the test images are scored once,
with the chosen model. The classical upsamplers have no settings.

  python -m experiments.superres [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time

import numpy as np

from ae_jax import figures, results
from ae_jax.applications import denoise, metrics, superres
from experiments import _protocol

NAME = "superres"
FACTOR = 2
ANCHORS = "Lanczos 20.93, bicubic 20.74"
GOAL = 24.0
SHOW = 8


def main(argv=None):
  p = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k")
  _protocol.add_budget_arguments(
      p, [(3, 16), (6, 16)], "training budgets; the best PSNR on validation is kept")
  args = p.parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(160, 16))
  channels, grid, val_size = ((4, 8), [(1, 32)], 32) if args.smoke else (
      (32, 64), args.dae_grid, args.val_size)
  train, val = _protocol.carve_validation(train, val_size)
  t_start = time.time()
  small = superres.box_downsample(test.x, FACTOR)
  size = test.x.shape[1:3]
  outputs = {f"{m} (Pillow)": (superres.pil_upsample(small, size, m), "")
             for m in ("nearest", "bilinear", "bicubic", "lanczos")}
  try:
    from skimage.transform import resize  # pylint: disable=g-import-not-at-top
    outputs["cubic spline (scikit-image)"] = (
        np.clip(resize(small, test.x.shape, order=3), 0, 1).astype(np.float32), "order 3")
  except ImportError:
    print("note: scikit-image is not installed (pip install 'ae_jax[compare]'); "
          "the cubic spline baseline is skipped")
  val_small = superres.repeat_upsample(superres.box_downsample(val.x, FACTOR), FACTOR)
  trained, train_seconds, val_rows = _protocol.fit_budgets(
      grid,
      lambda epochs, batch_size: denoise.denoiser_config(
          "downsample", 0.0, channels=channels, epochs=epochs, batch_size=batch_size,
          factor=FACTOR),
      train,
      lambda model: metrics.psnr(val.x, np.clip(model.reconstruct(val_small), 0, 1)).mean(),
      "validation PSNR", args.seed)
  chosen = next(r for r in val_rows if r["chosen"])
  epochs = chosen["epochs"]
  outputs["conv autoencoder"] = (
      np.clip(trained.reconstruct(superres.repeat_upsample(small, FACTOR)), 0, 1),
      f"spatial_denoising {channels}, {epochs} epochs, batch {chosen['batch']} "
      f"({train_seconds:.0f} s)")
  rows = [{"method": name, "setting": setting,
           "psnr": float(metrics.psnr(test.x, images).mean()),
           "ssim": float(metrics.ssim(test.x, images).mean())}
          for name, (images, setting) in outputs.items()]
  model = rows[-1]["psnr"]
  classical = {r["method"]: r["psnr"] for r in rows[:-1]}
  best = max(classical, key=classical.get)
  goals = [{"issue anchor": ANCHORS, "best classical here": f"{best} {classical[best]:.2f}",
            "goal": GOAL, "conv autoencoder": model, "goal met": bool(model >= GOAL)}]
  shown = [test.x[:SHOW], superres.repeat_upsample(small[:SHOW], FACTOR)]
  labels = ["original 28x28", "input 14x14"]
  for name in ("bicubic (Pillow)", "lanczos (Pillow)", "conv autoencoder"):
    shown.append(outputs[name][0][:SHOW])
    labels.append(name.replace(" (Pillow)", ""))
  figure = figures.image_rows(shown, labels, out / "superres_grid.png",
                              title="14x14 -> 28x28 super-resolution of MNIST test digits")
  seconds = round(time.time() - t_start, 1)
  record = _protocol.protocol(
      args.data,
      _protocol.carved_splits(len(train), len(val), len(test)),
      tuned=[f"DAE epochs:batch among {[f'{e}:{b}' for e, b in grid]}: validation PSNR"],
      untuned=[f"spatial_denoising channels {channels}, latent 784, Adam 2e-3 cosine; "
               "the classical upsamplers have no settings"],
      budget={"epochs": epochs, "train_seconds": round(train_seconds, 1),
              "wall_seconds": seconds})
  result = {"data": args.data, "smoke": args.smoke, "epochs": epochs,
            "train_seconds": round(train_seconds, 1), "validation": val_rows, "rows": rows,
            "goals": goals, "protocol": record, "figure": figure.name, "seconds": seconds}
  results.write_results(out, result, {"Protocol": _protocol.rows(record),
                                      "Validation PSNR of each training budget": val_rows,
                                      "Test PSNR / SSIM (mean per image)": rows, "Goal": goals},
                        title="Super-resolution 14x14 -> 28x28 (MNIST)",
                        echo=["Test PSNR / SSIM (mean per image)", "Goal"])
  return result


if __name__ == "__main__":
  main()
