"""Figures of autoencoders and their applications, for notebooks, reports and the README.

Every function takes numpy arrays in data space and returns a matplotlib `Figure` made
without pyplot (no global state, any backend; a notebook shows it as the cell's value);
`save(fig, path)` writes a small PNG. Images are (N, H, W, C) with values in [0, 1],
sequences (N, T, C) or (N, T), vectors (N, D).
"""

import io
import pathlib
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

CLASS_COLORS = "tab10"


def save(fig: Figure, path, dpi: int = 100, colors: int = 256) -> pathlib.Path:
  """Write `fig` as a PNG with an adaptive palette of `colors` (small files for git)."""
  from PIL import Image
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  # a tight bounding box with a margin keeps titles and labels off the image's edge
  fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", bbox_inches="tight",
              pad_inches=0.08)
  with Image.open(buffer) as img:
    img.convert("RGB").quantize(colors).save(path, optimize=True)
  return path


def _show_image(ax, img, vmin: float = 0.0, vmax: float = 1.0):
  img = np.clip(np.asarray(img, np.float32), vmin, vmax)
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])


def image_grid(rows: Mapping[str, np.ndarray], *, n: int = 8, title: str = "",
               col_titles: Sequence[str] | None = None, size: float = 1.0) -> Figure:
  """One row per entry {label: images (N, H, W, C) in [0, 1]}, the first `n` of each."""
  rows = {k: np.asarray(v) for k, v in rows.items()}
  n = min(n, *(len(v) for v in rows.values()))
  height = size * len(rows) + (0.45 if title else 0.1)
  fig = Figure(figsize=(size * n + 1.0, height))
  axes = fig.subplots(len(rows), n, squeeze=False)
  for r, (label, imgs) in enumerate(rows.items()):
    for c in range(n):
      _show_image(axes[r, c], imgs[c])
    axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
  if col_titles is not None:
    for c, t in enumerate(col_titles[:n]):
      axes[0, c].set_title(t, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.4 / height if title else 1))
  return fig


def curve_grid(rows: Mapping[str, np.ndarray], *, n: int = 4, title: str = "",
               xlabel: str = "time step") -> Figure:
  """Sequences overlaid per panel: {label: (N, T) or (N, T, C)}, the first `n` examples."""
  rows = {k: np.asarray(v).reshape(len(v), np.asarray(v).shape[1], -1)[..., 0]
          for k, v in rows.items()}
  n = min(n, *(len(v) for v in rows.values()))
  fig = Figure(figsize=(2.6 * n, 2.3))
  axes = fig.subplots(1, n, squeeze=False, sharey=True)[0]
  for i, ax in enumerate(axes):
    for label, seqs in rows.items():
      ax.plot(seqs[i], lw=1.2, label=label)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0].legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3)
  return fig


def reconstructions(x: np.ndarray, x_hat: np.ndarray, *, n: int = 8, title: str = "") -> Figure:
  """Inputs above their reconstructions (images), or both overlaid (sequences, vectors)."""
  if np.asarray(x).ndim == 4:
    return image_grid({"input": x, "reconstruction": x_hat}, n=n, title=title)
  return curve_grid({"input": x, "reconstruction": x_hat}, n=min(n, 4), title=title)


def latent_scatter(panels: Mapping[str, np.ndarray], labels: np.ndarray | None = None, *,
                   title: str = "", axis_names: Sequence[str] = ("dim 1", "dim 2")) -> Figure:
  """Side-by-side 2-D scatters {name: z (N, 2)}, coloured by class `labels` (N,)."""
  fig = Figure(figsize=(4.2 * len(panels) + 0.6, 3.8), layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (name, z) in zip(axes, panels.items()):
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != 2:
      raise ValueError(f"latent_scatter needs 2-D points (N, 2), {name!r} has shape {z.shape}")
    points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap=CLASS_COLORS, s=4, alpha=0.7,
                        vmin=-0.5 if labels is not None else None,
                        vmax=9.5 if labels is not None else None)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel(axis_names[0])
    ax.set_ylabel(axis_names[1])
  if labels is not None:
    fig.colorbar(points, ax=list(axes), ticks=range(10), label="class", shrink=0.9)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def activation_histogram(z: np.ndarray, *, threshold: float = 0.0, title: str = "") -> Figure:
  """Histogram of latent activations z (N, K) beside each latent's firing rate; the
  title reports L0 (mean active latents per example) and dead latents (never active)."""
  z = np.asarray(z).reshape(len(z), -1)
  active = np.abs(z) > threshold
  l0, dead = active.sum(1).mean(), int((~active.any(0)).sum())
  fig = Figure(figsize=(8.5, 3.2))
  left, right = fig.subplots(1, 2)
  left.hist(z.ravel(), bins=60, color="tab:blue")
  left.set_yscale("log")
  left.set_xlabel("activation")
  left.set_ylabel("count (log)")
  rate = active.mean(0)
  right.bar(np.arange(z.shape[1]), np.sort(rate)[::-1], color="tab:orange", width=1.0)
  right.set_xlabel("latent (sorted by firing rate)")
  right.set_ylabel("fraction of examples active")
  fig.suptitle(title or f"L0 = {l0:.2f} of {z.shape[1]} latents, {dead} dead", fontsize=10)
  fig.tight_layout(pad=0.4)
  return fig


def denoising(noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray, *, n: int = 8,
              title: str = "") -> Figure:
  """Noisy / denoised / clean rows (images) or overlaid curves (sequences)."""
  rows = {"noisy": noisy, "denoised": denoised, "clean": clean}
  if np.asarray(clean).ndim == 4:
    return image_grid(rows, n=n, title=title)
  return curve_grid(rows, n=min(n, 4), title=title)


def samples_and_interpolation(samples: np.ndarray, path: np.ndarray, *,
                              title: str = "") -> Figure:
  """Prior samples (N, H, W, C) above a latent interpolation (S, H, W, C)."""
  n = max(len(samples), len(path))
  fig = Figure(figsize=(0.95 * n + 1.0, 2.3))
  axes = fig.subplots(2, n, squeeze=False)
  for r, (label, imgs) in enumerate((("samples", samples), ("interpolation", path))):
    for c in range(n):
      if c < len(imgs):
        _show_image(axes[r, c], imgs[c])
      else:
        axes[r, c].axis("off")
    axes[r, 0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(pad=0.3)
  return fig


def score_histogram(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None, *,
                    title: str = "", log: bool = True) -> Figure:
  """Anomaly scores of normal (label 0) and anomalous (label 1) examples, with the
  detector's threshold as a vertical line."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  fig = Figure(figsize=(6.0, 3.4))
  ax = fig.subplots()
  values = np.log10(np.maximum(scores, 1e-12)) if log else scores
  bins = np.histogram_bin_edges(values, bins=50)
  ax.hist(values[~labels], bins=bins, alpha=0.6, label=f"normal ({(~labels).sum()})")
  ax.hist(values[labels], bins=bins, alpha=0.6, label=f"anomalous ({labels.sum()})")
  if threshold is not None:
    t = np.log10(max(threshold, 1e-12)) if log else threshold
    ax.axvline(t, color="black", ls="--", lw=1.2, label="threshold")
  ax.set_xlabel("log10 anomaly score" if log else "anomaly score")
  ax.set_ylabel("examples")
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout(pad=0.4)
  return fig


def roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str = "",
               ax=None) -> Figure:
  """ROC curves {name: (labels (N,) with 1 = anomaly, scores (N,))}, AUC in the legend.
  With `ax`, draws into that axes (for side-by-side panels) and returns its figure."""
  from sklearn.metrics import roc_auc_score, roc_curve
  if ax is None:
    fig = Figure(figsize=(4.4, 4.0))
    ax = fig.subplots()
  for name, (labels, scores) in curves.items():
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, lw=1.4, label=f"{name} (AUC {roc_auc_score(labels, scores):.3f})")
  ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.legend(fontsize=7, loc="lower right")
  if title:
    ax.set_title(title, fontsize=10)
  ax.figure.tight_layout(pad=0.4)
  return ax.figure


def rate_distortion(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                    title: str = "", xlabel: str = "bytes per image",
                    ylabel: str = "PSNR (dB)", log_x: bool = True) -> Figure:
  """Rate-distortion curves {name: (rates, qualities)}, one line with markers each."""
  fig = Figure(figsize=(5.6, 3.8))
  ax = fig.subplots()
  for name, (rates, quality) in curves.items():
    order = np.argsort(rates)
    ax.plot(np.asarray(rates)[order], np.asarray(quality)[order], "o-", ms=3.5, lw=1.3,
            label=name)
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout(pad=0.4)
  return fig


def before_after(before: np.ndarray, after: np.ndarray, target: np.ndarray, *,
                 labels: Sequence[str] = ("input", "autoencoder", "original"),
                 extra: Mapping[str, np.ndarray] | None = None, n: int = 8,
                 title: str = "") -> Figure:
  """Rows of images: the damaged input, the model's output, optional baselines (`extra`,
  {label: images}) and the original; for inpainting and super-resolution."""
  rows = {labels[0]: before, labels[1]: after, **(extra or {}), labels[2]: target}
  return image_grid(rows, n=n, title=title)


def grouped_bars(groups: Mapping[str, Mapping[str, float]], *, ylabel: str, title: str = "",
                 log_y: bool = False) -> Figure:
  """Bars {group (x tick): {series: value}}, one colour per series, value above each bar."""
  series = list(dict.fromkeys(s for g in groups.values() for s in g))
  width = 0.8 / len(series)
  fig = Figure(figsize=(max(5.0, 1.3 * len(groups) + 2), 3.8))
  ax = fig.subplots()
  x = np.arange(len(groups))
  for i, name in enumerate(series):
    vals = [g.get(name, np.nan) for g in groups.values()]
    bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.bar_label(bars, labels=[f"{v:,.0f}" if np.isfinite(v) else "" for v in vals],
                 fontsize=6, padding=1)
  ax.set_xticks(x, list(groups), fontsize=8)
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale("log")
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title, fontsize=10)
  fig.tight_layout(pad=0.4)
  return fig
