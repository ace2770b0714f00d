"""Figures of a training run: the loss curve and a reconstruction grid (PNG, Agg backend)."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curve(history: list[dict], path: pathlib.Path) -> pathlib.Path:
  """Training and evaluation loss against step."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    rows = [r for r in history if r.get("split") == split and "loss" in r]
    if rows:
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split, ms=3)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  if history and min(r.get("loss", 1.0) for r in history) > 0:
    ax.set_yscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def image_rows(rows: list[np.ndarray], labels: list[str], path: pathlib.Path,
               title: str = "") -> pathlib.Path:
  """A grid with one row per array of images (N, H, W, C), values in [0, 1]."""
  n = rows[0].shape[0]
  fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.2 * len(rows)), squeeze=False)
  for r, (imgs, label) in enumerate(zip(rows, labels)):
    for c in range(n):
      ax = axes[r, c]
      img = np.clip(imgs[c], 0, 1)
      ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
    axes[r, 0].set_ylabel(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def reconstruction_grid(x: np.ndarray, x_hat: np.ndarray, path: pathlib.Path) -> pathlib.Path:
  """Originals above reconstructions for images; overlaid curves for sequences/vectors."""
  if x.ndim == 4:
    lo, hi = float(x.min()), float(x.max())
    scale = (lambda a: (a - lo) / (hi - lo)) if hi - lo > 1e-8 else (lambda a: a)
    return image_rows([scale(x), scale(x_hat)], ["input", "reconstruction"], path)
  n = x.shape[0]
  fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2), squeeze=False)
  for i in range(n):
    ax = axes[0, i]
    ax.plot(x[i].reshape(x.shape[1], -1)[:, 0], lw=1, label="input")
    ax.plot(x_hat[i].reshape(x.shape[1], -1)[:, 0], lw=1, label="reconstruction")
    ax.set_xticks([])
  axes[0, 0].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def training_figures(trained, data, num: int = 8) -> dict[str, pathlib.Path]:
  """Write loss_curve.png and reconstructions.png into the run's workdir."""
  out = pathlib.Path(trained.workdir)
  paths = {"loss_curve": loss_curve(trained.history, out / "loss_curve.png")}
  x = trained.scaler.inverse_transform(data.x[:num])
  cond = None
  if trained.conditional and data.y is not None:
    cond = data.y[:num]
  x_hat = trained.reconstruct(x, cond)
  paths["reconstructions"] = reconstruction_grid(x, x_hat, out / "reconstructions.png")
  return paths
