"""TensorBoard event files of a training run (`train.tensorboard=true`, the `[tensorboard]` extra).

`fit` writes, into `workdir/tensorboard`: every logged training step's metrics
(`train/loss`, the family's terms, `train/grad_norm`) and `train/learning_rate`; every
evaluation's metrics (`eval/...`); and every `train.tensorboard_images_every` evaluations
an image of inputs above their reconstructions (`images/reconstructions`) and, for
families with a prior, decoded prior samples (`images/samples`). View them with
`tensorboard --logdir WORKDIR/tensorboard`.

The writer is tensorboardX's `SummaryWriter`; on resume it purges events past the
restored step, so a resumed run shows one curve.
"""

import io
import pathlib

import numpy as np

from ae_jax.errors import ConfigError

LOGDIR = "tensorboard"
NUM_IMAGES = 8


def _summary_writer():
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    raise ConfigError("train.tensorboard=true needs tensorboardX: pip install -e '.[tensorboard]' "
                      "(or set train.tensorboard=false)") from None
  return SummaryWriter


def png_to_array(png: bytes) -> np.ndarray:
  """Decoded PNG bytes -> (H, W, 3) uint8."""
  from PIL import Image
  with Image.open(io.BytesIO(png)) as img:
    return np.asarray(img.convert("RGB"))


def _render(draw, *args) -> np.ndarray:
  """Run a `figures` function that writes a PNG to a path on an in-memory file instead."""
  buffer = io.BytesIO()
  draw(*args, buffer)
  return png_to_array(buffer.getvalue())


class TrainingBoard:
  """Scalars and images of one run, written with tensorboardX.

  Args:
    logdir: folder of the event files.
    trained: a `Trained` whose `params` this board replaces before drawing (its compiled
      encode/decode are reused, so drawing compiles once).
    examples: data-space examples (n, *input_shape) to reconstruct, and their labels
      (n,) or None (needed by conditional families).
    learning_rate: a float or an optax schedule of the step.
    can_sample: draw prior samples as well.
    images_every: evaluations between two images; `start_step` > 0 purges events past it.
  """

  def __init__(self, logdir, trained, examples, labels, *, learning_rate, can_sample: bool,
               images_every: int, start_step: int = 0):
    if not isinstance(images_every, int) or isinstance(images_every, bool) or images_every < 1:
      raise ConfigError("train.tensorboard_images_every must be a positive integer, got "
                        f"{images_every!r}")
    self.logdir = pathlib.Path(logdir)
    self.writer = _summary_writer()(str(self.logdir),
                                    purge_step=start_step + 1 if start_step else None)
    self.trained = trained
    self.examples = np.asarray(examples[:NUM_IMAGES], np.float32)
    self.labels = None if labels is None else np.asarray(labels[:NUM_IMAGES])
    self.learning_rate = learning_rate
    self.can_sample = can_sample
    self.images_every = images_every
    self.num_evals = 0

  def learning_rate_at(self, step: int) -> float:
    """The rate used by the update that produced `step` (optax counts from 0)."""
    lr = self.learning_rate
    return float(lr(step - 1)) if callable(lr) else float(lr)

  def scalars(self, step: int, split: str, metrics: dict) -> None:
    """metrics: {name: float}; `finite` (a flag, not a measurement) is left out."""
    for name, value in metrics.items():
      if name != "finite":
        self.writer.add_scalar(f"{split}/{name}", float(value), step)
    if split == "train":
      self.writer.add_scalar("train/learning_rate", self.learning_rate_at(step), step)

  def evaluation(self, step: int, metrics: dict, params) -> None:
    """An evaluation's metrics; images on the first and every `images_every`-th one."""
    self.scalars(step, "eval", metrics)
    if self.num_evals % self.images_every == 0:
      self.images(step, params)
    self.num_evals += 1

  def images(self, step: int, params) -> None:
    from ae_jax import figures
    self.trained.params = params
    x_hat = self.trained.reconstruct(self.examples, self.labels)
    self.writer.add_image("images/reconstructions",
                          _render(figures.reconstruction_grid, self.examples, x_hat), step,
                          dataformats="HWC")
    if self.can_sample:
      samples = self.trained.sample(len(self.examples), seed=0, cond=self.labels)
      self.writer.add_image("images/samples", _render(figures.sample_grid, samples), step,
                            dataformats="HWC")
    self.writer.flush()

  def flush(self) -> None:
    self.writer.flush()

  def close(self) -> None:
    self.writer.close()


def read_events(logdir) -> dict:
  """{'scalars': {tag: [(step, value)]}, 'images': {tag: [(step, (H, W, 3) uint8)]}} of the
  event files in `logdir`, read back with TensorBoard's own reader (needs `tensorboard`)."""
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0})
  acc.Reload()
  tags = acc.Tags()
  return {"scalars": {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]},
          "images": {t: [(e.step, png_to_array(e.encoded_image_string)) for e in acc.Images(t)]
                     for t in tags["images"]}}
