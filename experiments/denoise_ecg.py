"""Signal denoising: a Conv1D denoising autoencoder on ECG5000 beats against classical filters.

Corruption (`noise_wander`): Gaussian noise of std 0.5 x the beat's std plus baseline
wander, a sine of random phase with period 140 samples and amplitude 0.3 x the beat's std;
fixed seeds for the test and tuning sets, fresh draws for every training step. The
denoising family with the conv1d network trains on TRAIN+VALIDATION (399 beats) and is
compared on TEST (4,499 beats) with a moving average and a Savitzky-Golay filter whose
settings are chosen on corrupted training beats. Reports the output SNR, 10 log10(clean
energy / error energy), averaged over beats.

  python -m experiments.denoise_ecg [--smoke] [--out DIR]
"""

import time

import numpy as np

from ae_jax import configs, fit, results
from ae_jax.applications import denoise, metrics

NAME = "denoise_ecg"
LEVEL, WANDER = 0.5, 0.3
ANCHOR_SG, GOAL = 9.54, 14.0
MA_GRID = tuple({"window": w} for w in range(3, 32, 2))
SG_GRID = tuple({"window": w, "order": o} for w in range(5, 42, 4) for o in (2, 3, 4))


def model_config(epochs: int, channels=(32, 64), latent_dim: int = 64, batch_size: int = 32):
  c = configs.get_preset("default")
  c.model.family = "denoising"
  c.model.network = "conv1d"
  c.model.channels = tuple(channels)
  c.model.kernel_size = 5
  c.model.latent_dim = latent_dim
  c.model.recon_loss = "mse"
  c.objective.noise = "noise_wander"
  c.objective.noise_level = LEVEL
  c.objective.wander = WANDER
  c.objective.noise_clip = False
  configs.set_offline_training(c, learning_rate=2e-3, batch_size=batch_size, epochs=epochs)
  c.train.log_every = 200
  return c


def snr_score(clean, estimate):
  return metrics.snr_db(clean, estimate)


def draw(clean, noisy, outputs: dict, labels, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  picks = [int(i) for i in np.flatnonzero(labels == 1)[:2]]
  picks += [int(i) for i in np.flatnonzero(labels != 1)[:2]]
  fig, axes = plt.subplots(len(picks), 1, figsize=(9, 2.2 * len(picks)), sharex=True,
                           squeeze=False)
  t = np.arange(clean.shape[1])
  for ax, i in zip(axes[:, 0], picks):
    ax.plot(t, noisy[i, :, 0], color="0.75", lw=0.8, label="noisy")
    for (name, est), color in zip(outputs.items(), ("tab:orange", "tab:green", "tab:blue")):
      snr = float(metrics.snr_db(clean[i:i + 1], est[i:i + 1])[0])
      ax.plot(t, est[i, :, 0], color=color, lw=1.1, label=f"{name} ({snr:.1f} dB)")
    ax.plot(t, clean[i, :, 0], color="k", lw=1.2, ls="--", label="clean")
    kind = "normal" if labels[i] == 1 else f"abnormal (class {int(labels[i])})"
    ax.set_title(f"test beat {i}: {kind}", fontsize=9)
    ax.legend(fontsize=7, ncol=5, loc="lower left")
  axes[-1, 0].set_xlabel("sample")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None):
  args = results.parser(NAME, __doc__.splitlines()[0], epochs=300).parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(64, 64), data="ecg5000",
                                   splits=("train+validation", "test"))
  epochs, channels = args.epochs, (32, 64)
  if args.smoke:
    epochs, channels = 1, (4, 8)
  t_start = time.time()
  noisy = denoise.corrupt_fixed(test.x, "noise_wander", LEVEL, 1000 * args.seed + 1,
                                noise_clip=False, wander=WANDER)
  tune_noisy = denoise.corrupt_fixed(train.x, "noise_wander", LEVEL, 1000 * args.seed + 2,
                                     noise_clip=False, wander=WANDER)
  wander_only = denoise.corrupt_fixed(test.x, "noise_wander", 0.0, 1000 * args.seed + 1,
                                      noise_clip=False, wander=WANDER)
  outputs, settings = {}, {}
  ma, _ = denoise.choose_setting(denoise.moving_average, MA_GRID, train.x, tune_noisy, snr_score)
  outputs["moving average"] = denoise.moving_average(noisy, **ma)
  settings["moving average"] = f"window {ma['window']}"
  sg, _ = denoise.choose_setting(denoise.savgol, SG_GRID, train.x, tune_noisy, snr_score)
  outputs["Savitzky-Golay"] = denoise.savgol(noisy, **sg)
  settings["Savitzky-Golay"] = f"window {sg['window']}, order {sg['order']}"
  cfg = model_config(epochs, channels)
  cfg.seed = args.seed
  trained, train_seconds = results.timed(fit.fit, cfg, train_data=train, progress=False)
  outputs["Conv1D DAE"] = trained.reconstruct(noisy)
  settings["Conv1D DAE"] = f"conv1d {channels}, latent 64, {epochs} epochs ({train_seconds:.0f} s)"
  normal = test.y == 1
  rows = [{"method": "noisy input", "setting": "", **_snr_columns(test.x, noisy, normal)}]
  rows.append({"method": "any filter that leaves the wander (cap)",
               "setting": "noise removed exactly", **_snr_columns(test.x, wander_only, normal)})
  for name, est in outputs.items():
    rows.append({"method": name, "setting": settings[name], **_snr_columns(test.x, est, normal)})
  best_classical = max(r["snr_db"] for r in rows if r["method"] in ("moving average",
                                                                    "Savitzky-Golay"))
  dae = rows[-1]["snr_db"]
  goals = [{"issue anchor (Savitzky-Golay)": ANCHOR_SG, "best classical here": best_classical,
            "goal": GOAL, "Conv1D DAE": dae, "goal met": bool(dae >= GOAL)}]
  figure = draw(test.x, noisy, outputs, test.y, out / "ecg_denoise.png")
  result = {"smoke": args.smoke, "epochs": epochs, "train_seconds": round(train_seconds, 1),
            "rows": rows, "goals": goals, "figure": figure.name,
            "seconds": round(time.time() - t_start, 1)}
  results.write_results(out, result, {"Test output SNR (dB), mean over beats": rows,
                                      "Goal": goals}, title="ECG5000 denoising", echo=True)
  return result


def _snr_columns(clean, estimate, normal):
  snr = metrics.snr_db(clean, estimate)
  return {"snr_db": float(snr.mean()), "normal beats": float(snr[normal].mean()),
          "abnormal beats": float(snr[~normal].mean()) if np.any(~normal) else None}


if __name__ == "__main__":
  main()
