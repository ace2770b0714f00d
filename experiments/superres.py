"""Super-resolution 14x14 -> 28x28 on MNIST: a conv autoencoder against classical upsamplers.

Low-resolution images are 2x2 box averages of the test digits. A `spatial_denoising`
autoencoder is trained with the `downsample` corruption (its input is the 14x14 image
repeated to 28x28) and compared with nearest, bicubic and Lanczos upsampling (Pillow) and
the cubic spline of scikit-image (optional extra). Reports mean per-image PSNR and SSIM.

  python -m experiments.superres [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time

import numpy as np

from ae_jax import figures, fit, results
from ae_jax.applications import denoise, metrics, superres

NAME = "superres"
FACTOR = 2
ANCHORS = "Lanczos 20.93, bicubic 20.74"
GOAL = 24.0
SHOW = 8


def main(argv=None):
  args = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k", epochs=3,
                        batch_size=16).parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(128, 16))
  channels, epochs, batch_size = ((4, 8), 1, 32) if args.smoke else (
      (32, 64), args.epochs, args.batch_size)
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
  cfg = denoise.denoiser_config("downsample", 0.0, channels=channels, epochs=epochs,
                                batch_size=batch_size, factor=FACTOR)
  cfg.seed = args.seed
  trained, train_seconds = results.timed(fit.fit, cfg, train_data=train, progress=False)
  outputs["conv autoencoder"] = (
      np.clip(trained.reconstruct(superres.repeat_upsample(small, FACTOR)), 0, 1),
      f"spatial_denoising {channels}, {epochs} epochs ({train_seconds:.0f} s)")
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
  result = {"data": args.data, "smoke": args.smoke, "epochs": epochs,
            "train_seconds": round(train_seconds, 1), "rows": rows, "goals": goals,
            "figure": figure.name, "seconds": round(time.time() - t_start, 1)}
  results.write_results(out, result, {"Test PSNR / SSIM (mean per image)": rows, "Goal": goals},
                        title="Super-resolution 14x14 -> 28x28 (MNIST)", echo=True)
  return result


if __name__ == "__main__":
  main()
