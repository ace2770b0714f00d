"""A lossy codec from a trained rate-distortion model: arrays <-> bytes.

    codec = Codec.load("workdir")          # or Codec.from_trained(fit(...))
    data = codec.compress(x)               # x (N, *input_shape) in data space -> bytes
    x_hat = codec.decompress(data)         # (N, *input_shape) float32

`decompress(compress(x))` equals `reconstruct(x)` exactly: both decode the same integer
symbols. Each example's own stream (`compress(x[i:i + 1])`) holds the very same integers
as its rows in a batch's stream; the image decoded from them at another batch size can
differ in the last bits (XLA's CPU matmuls may sum in another order at another
shape), as with any float decoder. The symbols are round(y - median) of the encoder's latents y on each channel's
median grid (the model's `symbols`), coded with `ae_jax.bitstream` under `ae_jax.entropy`
tables. The tables (and the medians they hold) are computed once from the trained
weights, with the quantiles solved exactly, and kept in the workdir
(`entropy_tables.npz`), so every later codec rounds on the same grid and reads the very
same integers the encoder wrote.

With the scale hyperprior (`model.rd_prior='hyperprior'`) the symbols of an example are
the side symbols of the hyper-latent z (coded with the saved factorized tables) followed
by round(y); y[i] is coded with the fixed Gaussian table (`entropy.gaussian_tables`) of
the scale index that the model computes from z's symbols (`scale_indices`). Encoder and
decoder compute those indices with one compiled program on one example at a time (shape
(1, hyper_dim)), so the indices do not depend on how examples are batched. The indices
come from float arithmetic: a decoder on another CPU kind or XLA version could round a
scale into a neighbouring table and misread the stream (as with any float entropy
model; Ballé et al.'s integer networks avoid it), which the format does not detect.
"""

import dataclasses
import functools
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import bitstream, entropy
from ae_jax.errors import ConfigError, DataError

TABLES_FILE = "entropy_tables.npz"


def _bottleneck(model) -> entropy.EntropyBottleneck:
  """The model's EntropyBottleneck module (a ConfigError for models without one)."""
  if not all(hasattr(model, name) for name in ("symbols", "dequantize", "filters")):
    raise ConfigError(f"a codec needs a model with an entropy bottleneck (family "
                      f"'rate_distortion'); this is a {type(model).__name__}")
  return entropy.EntropyBottleneck(_channels(model), filters=tuple(model.filters))


def _channels(model) -> int:
  """Channels of the model's entropy model (the latent size for a dense latent)."""
  return getattr(model, "bottleneck_channels", model.latent_dim)


def _with_quantiles(params, quantiles):
  """A copy of a model's params whose bottleneck quantiles are `quantiles` (C, 3)."""
  def walk(tree):
    if "quantiles" in tree:
      return {**tree, "quantiles": jnp.asarray(quantiles, jnp.float32)}
    return {k: walk(v) if hasattr(v, "items") else v for k, v in tree.items()}
  return walk(params)


def prepare(model, params, tables: entropy.CodingTables | None = None):
  """(params, tables) of a codec: without tables, the bottleneck's quantiles are solved
  exactly (`entropy.solve_quantiles`) and the tables built from them; with saved
  tables, the params take the tables' medians, so rounding uses the grid they code."""
  module = _bottleneck(model)
  eb_params = entropy.bottleneck_params(params)
  if tables is None:
    eb_params = entropy.solve_quantiles(module, eb_params)
    tables = entropy.coding_tables(module, eb_params)
    return _with_quantiles(params, eb_params["quantiles"]), tables
  if len(tables.medians) != _channels(model):
    raise DataError(f"entropy tables code {len(tables.medians)} latent channels but the "
                    f"model has {_channels(model)}: delete the stale {TABLES_FILE}")
  quantiles = np.asarray(eb_params["quantiles"]).copy()
  quantiles[:, 1] = tables.medians
  return _with_quantiles(params, quantiles), tables


@dataclasses.dataclass
class Codec:
  """A trained rate-distortion model with its coding tables.

  model/params: the Flax module (with encode / decode / to_data) and its variables.
  tables: one table per latent channel (what the workdir keeps); `stream_tables` tiles
    them over the latent's positions, one table per coded symbol.
  scale / inverse: data space <-> model space maps (the training scaler), arrays to arrays.
  """
  model: Any
  params: Any
  tables: entropy.CodingTables
  input_shape: tuple
  scale: Any = None
  inverse: Any = None
  batch_size: int = 1024

  @classmethod
  def from_trained(cls, trained, tables: entropy.CodingTables | None = None) -> "Codec":
    """The codec of a `ae_jax.fit.Trained`; tables from its workdir when saved there,
    else computed (and saved there when it has a workdir)."""
    workdir = getattr(trained, "workdir", None)
    path = pathlib.Path(workdir) / TABLES_FILE if workdir else None
    if tables is None and path is not None and path.is_file():
      with np.load(path) as f:
        tables = entropy.CodingTables.from_arrays(f)
    saved = tables is not None
    params, tables = prepare(trained.model, trained.params, tables)
    if not saved and path is not None:
      np.savez(path, **tables.to_arrays())
    return cls(trained.model, params, tables, tuple(trained.input_shape),
               trained.scaler.transform, trained.scaler.inverse_transform)

  @classmethod
  def load(cls, workdir, best: bool = False) -> "Codec":
    from ae_jax.fit import Trained  # pylint: disable=g-import-not-at-top
    return cls.from_trained(Trained.load(workdir, best=best))

  @functools.cached_property
  def stream_tables(self) -> entropy.CodingTables:
    """Tables of the flat factorized symbols the bitstream codes: (N, latent_dim), or
    with the hyperprior the side symbols (N, hyper_dim)."""
    return self.tables.tile(getattr(self.model, "positions", 1))

  @property
  def side_symbols(self) -> int:
    """Leading side symbols (z) of each example's symbols: hyper_dim, or 0."""
    return getattr(self.model, "side_symbols", 0)

  @property
  def symbol_count(self) -> int:
    """Symbols per example: side symbols + latent_dim."""
    return self.side_symbols + self.model.latent_dim

  def split_side(self, symbols) -> tuple[np.ndarray, np.ndarray]:
    """(side symbols (N, side_symbols), latent symbols (N, latent_dim)) of symbols
    (N, symbol_count); a DataError for another shape."""
    symbols = np.asarray(symbols)
    if symbols.ndim != 2 or symbols.shape[1] != self.symbol_count:
      raise DataError(f"symbols must be (N, {self.symbol_count}) (side symbols then "
                      f"latents), got shape {symbols.shape}")
    return symbols[:, :self.side_symbols], symbols[:, self.side_symbols:]

  @functools.cached_property
  def gaussian_tables(self) -> entropy.CodingTables:
    """The hyperprior's Gaussian tables, one row per table scale."""
    return entropy.gaussian_tables()

  @functools.cached_property
  def _scale_indices(self):
    return jax.jit(lambda p, side: self.model.apply(p, side, method=self.model.scale_indices))

  def scale_indices(self, side) -> np.ndarray:
    """Gaussian table index (N, latent_dim) int32 of each latent from the side symbols
    (N, hyper_dim), computed one example at a time (the same program in encoder and
    decoder, whatever the batch)."""
    side = np.asarray(side, np.int32)
    out = [np.asarray(self._scale_indices(self.params, row[None]))[0] for row in side]
    return np.stack(out) if out else np.zeros((0, self.model.latent_dim), np.int32)

  @functools.cached_property
  def _symbols(self):
    return jax.jit(lambda p, x: self.model.apply(p, x, method=self.model.symbols))

  @functools.cached_property
  def _decode(self):
    def decode(p, symbols):
      y_hat = self.model.apply(p, symbols, method=self.model.dequantize)
      return self.model.to_data(self.model.apply(p, y_hat, method=self.model.decode))
    return jax.jit(decode)

  def _check_input(self, x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape[1:] != self.input_shape:
      raise DataError(f"expected examples of shape {self.input_shape}, got {x.shape[1:]} "
                      f"(array shape {x.shape}); add a leading batch axis for one example")
    if not np.all(np.isfinite(x)):
      raise DataError("the input holds NaN or inf values; a codec needs finite data")
    return self.scale(x) if self.scale is not None else x

  def symbols(self, x) -> np.ndarray:
    """Integer symbols (N, C) int32 of data-space examples x (N, *input_shape)."""
    x = self._check_input(x)
    out = [np.asarray(self._symbols(self.params, x[i:i + self.batch_size]))
           for i in range(0, len(x), self.batch_size)]
    return np.concatenate(out) if out else np.zeros((0, self.symbol_count), np.int32)

  def from_symbols(self, symbols) -> np.ndarray:
    """Data-space reconstructions (N, *input_shape) of integer symbols (N, C)."""
    y = np.asarray(symbols, np.int32)
    out = [np.asarray(self._decode(self.params, y[i:i + self.batch_size]))
           for i in range(0, len(y), self.batch_size)]
    out = np.concatenate(out) if out else np.zeros((0, *self.input_shape), np.float32)
    return self.inverse(out) if self.inverse is not None else out

  def reconstruct(self, x) -> np.ndarray:
    """The test-time reconstruction of x: what `decompress(compress(x))` returns."""
    return self.from_symbols(self.symbols(x))

  def encode_symbols(self, symbols) -> bytes:
    """One byte string holding the integer symbols (N, C) of N examples."""
    if not self.side_symbols:
      return bitstream.encode(symbols, self.stream_tables)
    side, latents = self.split_side(symbols)
    return bitstream.encode_hyperprior(side, latents, self.stream_tables, self.gaussian_tables,
                                       self.scale_indices(side))

  def decode_symbols(self, data: bytes) -> np.ndarray:
    """The integer symbols (N, C) of a byte string from `encode_symbols` / `compress`."""
    if not self.side_symbols:
      return bitstream.decode(data, self.stream_tables)
    side, latents = bitstream.decode_hyperprior(
        data, self.stream_tables, self.gaussian_tables,
        lambda z: self.scale_indices(z[None])[0], self.model.latent_dim)
    return np.concatenate([side, latents], axis=1)

  def stream_bytes(self, symbols) -> np.ndarray:
    """Length (N,) of each example's stream on its own (`encode_symbols` of that one row,
    header and check included)."""
    if not self.side_symbols:
      return bitstream.stream_bytes(symbols, self.stream_tables)
    return np.asarray([len(self.encode_symbols(row[None])) for row in np.asarray(symbols)],
                      np.int64)

  def compress(self, x) -> bytes:
    """One byte string holding N examples x (N, *input_shape)."""
    return self.encode_symbols(self.symbols(x))

  def decompress(self, data: bytes) -> np.ndarray:
    """The examples (N, *input_shape) float32 of a byte string from `compress`."""
    return self.from_symbols(self.decode_symbols(data))

  def bytes_per_example(self, x) -> np.ndarray:
    """Length (N,) of each example's stream on its own, header and check included."""
    return self.stream_bytes(self.symbols(x))


@dataclasses.dataclass
class RateControlledCodec:
  """Per-image rate control: a byte cap per image met by choosing, for each image, one of
  several codecs of the same input shape (for example the lambdas of one rate-distortion
  sweep), as a JPEG encoder searches its quality setting for a target file size.

      rc = RateControlledCodec([codec_a, codec_b, ...])
      files = rc.compress(x, max_bytes=64)     # one self-contained file per image
      x_hat = rc.decompress(files)             # == rc.reconstruct(x, max_bytes=64)

  The encoder codes each image with every codec and keeps the one with the smallest
  squared error among those whose file fits `max_bytes` (file = 1 byte naming the codec +
  that codec's own stream of the image, header and check included). The decoder needs
  every codec's weights and tables. An image that no codec fits is an error, or with
  `overflow="smallest"` is coded with the codec that gives its smallest file.
  """
  codecs: list

  def __post_init__(self):
    if not 0 < len(self.codecs) <= 256:
      raise ConfigError(f"a RateControlledCodec takes 1 to 256 codecs, got {len(self.codecs)}")
    shapes = {tuple(c.input_shape) for c in self.codecs}
    if len(shapes) != 1:
      raise ConfigError(f"every codec must take examples of one shape, got {sorted(shapes)}")

  @property
  def input_shape(self) -> tuple:
    return tuple(self.codecs[0].input_shape)

  def _plan(self, x, max_bytes: int, overflow: str):
    """(codec index (N,), file bytes (N,), symbols of every codec [K x (N, C_k)])."""
    if overflow not in ("error", "smallest"):
      raise ConfigError(f"overflow must be 'error' or 'smallest', got {overflow!r}")
    x = np.asarray(x, np.float32)
    symbols = [c.symbols(x) for c in self.codecs]
    sizes = np.stack([1 + c.stream_bytes(s) for s, c in zip(symbols, self.codecs)])  # (K, N)
    errors = np.stack([((c.from_symbols(s) - x) ** 2).reshape(len(x), -1).mean(-1)
                       for s, c in zip(symbols, self.codecs)])
    fits = sizes <= max_bytes
    over = np.flatnonzero(~fits.any(0))
    if len(over) and overflow == "error":
      raise DataError(
          f"{len(over)} of {len(x)} images (first: index {over[0]}) need more than "
          f"max_bytes={max_bytes} with every codec (the smallest file of image {over[0]} is "
          f"{sizes[:, over[0]].min()} bytes): raise max_bytes, add a codec with a larger "
          "lambda, or pass overflow='smallest'")
    choice = np.where(fits, errors, np.inf).argmin(0)
    choice[over] = sizes[:, over].argmin(0)
    return choice, sizes[choice, np.arange(len(x))], symbols

  def _decode(self, choice, rows) -> np.ndarray:
    """Reconstructions (N, ...) of per-image symbol rows, each codec's images decoded as
    one batch in their order (so reconstruct and decompress run the same batches and
    agree bit for bit)."""
    out = np.zeros((len(choice), *self.input_shape), np.float32)
    for k in np.unique(choice):
      idx = np.flatnonzero(choice == k)
      out[idx] = self.codecs[k].from_symbols(np.stack([rows[i] for i in idx]))
    return out

  def choose(self, x, max_bytes: int, overflow: str = "error"):
    """(codec index (N,) int, file bytes (N,) int, reconstruction (N, *input_shape)) of
    the per-image choice under `max_bytes`."""
    choice, nbytes, symbols = self._plan(x, max_bytes, overflow)
    rows = [symbols[k][i] for i, k in enumerate(choice)]
    return choice, nbytes, self._decode(choice, rows)

  def reconstruct(self, x, max_bytes: int, overflow: str = "error") -> np.ndarray:
    """What `decompress(compress(x, max_bytes))` returns."""
    return self.choose(x, max_bytes, overflow)[2]

  def compress(self, x, max_bytes: int, overflow: str = "error") -> list:
    """One file (bytes) per image of x (N, *input_shape)."""
    choice, _, symbols = self._plan(x, max_bytes, overflow)
    return [bytes([k]) + self.codecs[k].encode_symbols(symbols[k][i:i + 1])
            for i, k in enumerate(choice)]

  def decompress(self, files) -> np.ndarray:
    """The images (N, *input_shape) of files from `compress`."""
    choice, rows = [], []
    for i, data in enumerate(files):
      if not isinstance(data, (bytes, bytearray)) or len(data) < 2:
        raise DataError(f"file {i} is not a rate-controlled stream (too short or not bytes)")
      if data[0] >= len(self.codecs):
        raise DataError(f"file {i} names codec {data[0]} but this RateControlledCodec has "
                        f"{len(self.codecs)}: it was written with other codecs, or is corrupt")
      choice.append(data[0])
      rows.append(self.codecs[data[0]].decode_symbols(bytes(data[1:]))[0])
    return self._decode(np.asarray(choice, np.int64), rows)


def ideal_bits(codec: Codec, x) -> np.ndarray:
  """Bits (N,) an ideal entropy coder would spend on each example's symbols (with the
  hyperprior: z's and y's, y with the table of its scale index)."""
  symbols = codec.symbols(x)
  if not codec.side_symbols:
    return entropy.ideal_bits(codec.stream_tables, symbols)
  side, latents = codec.split_side(symbols)
  return (entropy.ideal_bits(codec.stream_tables, side)
          + entropy.ideal_bits_indexed(codec.gaussian_tables, latents, codec.scale_indices(side)))


def read_images(path) -> np.ndarray:
  """Examples from a .npy file (N, *shape) or (shape) or one image file (PNG, JPEG, ...)
  as (1, H, W, 1) grey in [0, 1]."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f"input file {path} does not exist")
  if path.suffix == ".npy":
    try:
      return np.load(path, allow_pickle=False)
    except ValueError as e:
      raise DataError(f"{path} is not a readable .npy array: {e}") from None
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    image = Image.open(path).convert("L")
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(f"{path} is neither a .npy array nor an image Pillow can read: {e}") from None
  return (np.asarray(image, np.float32) / 255.0)[None, :, :, None]


def write_images(path, x) -> pathlib.Path:
  """Write decoded examples: .npy as is; an image suffix (.png, ...) for one grey image."""
  path = pathlib.Path(path)
  if path.suffix == ".npy":
    np.save(path, x)
    return path
  if len(x) != 1 or x.ndim != 4 or x.shape[-1] != 1:
    raise DataError(f"an image file holds one grey image (1, H, W, 1); got {x.shape}: "
                    "write a .npy instead")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.clip(np.round(x[0, :, :, 0] * 255.0), 0, 255).astype(np.uint8)
  Image.fromarray(pixels).save(path)
  return path


def as_batch(x, input_shape) -> np.ndarray:
  """Examples (N, *input_shape) from x of that shape, one example (*input_shape), or grey
  images without the channel axis ((N,) H, W when input_shape is (H, W, 1))."""
  x = np.asarray(x, np.float32)
  shape = tuple(input_shape)
  if x.shape == shape:
    return x[None]
  if x.shape[1:] == shape:
    return x
  if shape[-1:] == (1,) and x.shape[-len(shape) + 1:] == shape[:-1]:
    return as_batch(x[..., None], shape)
  raise DataError(f"cannot read an array of shape {x.shape} as examples of shape {shape}")


def run_cli(args) -> int:
  """`ae-jax compress` / `ae-jax decompress` (see `ae_jax.cli`)."""
  codec = Codec.load(args.workdir, best=args.best)
  if args.command == "compress":
    x = as_batch(read_images(args.input), codec.input_shape)
    data = codec.compress(x)
    out = pathlib.Path(args.out or pathlib.Path(args.input).with_suffix(".aejx"))
    out.write_bytes(data)
    print(f"compressed {len(x)} example(s) of shape {codec.input_shape} into {len(data)} bytes "
          f"({len(data) / len(x):.1f} per example, header included): {out}")
    return 0
  path = pathlib.Path(args.input)
  if not path.is_file():
    raise DataError(f"input file {path} does not exist")
  x = codec.decompress(path.read_bytes())
  out = write_images(args.out or path.with_suffix(".npy"), x)
  print(f"decompressed {len(x)} example(s) of shape {codec.input_shape}: {out}")
  return 0
