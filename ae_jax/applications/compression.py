"""Lossy image compression with autoencoder latents, counted in real bytes per image.

A code is what the decoder needs to rebuild one image besides the shared weights: the
packed bits of its quantised latent (uniform quantiser, or VQ-VAE codebook indices), and
per-image side information where the quantiser uses any. `pack` writes that byte string
and `bytes_per_image` says its length without writing it; the two agree exactly.

Baselines: PCA coefficients through the same quantiser, and JPEG through Pillow, counted
as the whole file and as the entropy-coded scan data alone.
"""

import dataclasses
import io
import math

import numpy as np

SIDE_INFO_BYTES = 4  # two float16 numbers (offset, step) per image in 'per_image' mode


def pack_bits(codes, bits: int) -> bytes:
  """Integer codes (D,) in [0, 2**bits) as a big-endian bit string of ceil(D*bits/8) bytes."""
  codes = np.asarray(codes, np.int64).ravel()
  if bits < 1 or bits > 32:
    raise ValueError(f"bits must be in [1, 32], got {bits}")
  if codes.size and (codes.min() < 0 or codes.max() >= 2 ** bits):
    raise ValueError(f"codes must lie in [0, {2 ** bits}) for {bits} bits")
  shifts = np.arange(bits - 1, -1, -1)
  planes = ((codes[:, None] >> shifts) & 1).astype(np.uint8)
  return np.packbits(planes.ravel()).tobytes()


def unpack_bits(payload: bytes, count: int, bits: int) -> np.ndarray:
  """Inverse of `pack_bits`: `count` integer codes of `bits` bits each, (count,) int64."""
  flat = np.unpackbits(np.frombuffer(payload, np.uint8))[:count * bits]
  planes = flat.reshape(count, bits).astype(np.int64)
  return planes @ (1 << np.arange(bits - 1, -1, -1))


def packed_bytes(count: int, bits: int) -> int:
  """Length of `pack_bits` of `count` codes of `bits` bits each."""
  return math.ceil(count * bits / 8)


@dataclasses.dataclass
class UniformQuantizer:
  """Uniform scalar quantiser of latent vectors (N, D) with 2**bits levels per value.

  mode 'global': each dimension's range [low, high] is fitted on training latents and
    shared with the decoder like the weights; a code is only the packed levels.
  mode 'per_image': each image sends its own min and step as two float16 numbers
    (`SIDE_INFO_BYTES`), counted in its bytes.
  Levels sit at the centres of `2**bits` equal cells, so the largest error is half a cell.
  """
  bits: int
  mode: str = "global"
  low: np.ndarray | None = None
  high: np.ndarray | None = None

  def __post_init__(self):
    if self.mode not in ("global", "per_image"):
      raise ValueError(f"mode must be 'global' or 'per_image', got {self.mode!r}")
    if not 1 <= self.bits <= 16:
      raise ValueError(f"bits must be in [1, 16], got {self.bits}")

  @property
  def levels(self) -> int:
    return 2 ** self.bits

  def fit(self, z, quantile: float = 0.0) -> "UniformQuantizer":
    """Fit per-dimension ranges on training latents z (N, D), clipping `quantile` of each
    tail (0 = the full range); returns self."""
    z = np.asarray(z, np.float64)
    self.low = np.quantile(z, quantile, axis=0)
    self.high = np.quantile(z, 1.0 - quantile, axis=0)
    self.high = np.where(self.high > self.low, self.high, self.low + 1e-6)
    return self

  def _ranges(self, z):
    if self.mode == "global":
      if self.low is None:
        raise ValueError("fit the quantiser on training latents first")
      return np.broadcast_to(self.low, z.shape), np.broadcast_to(self.high, z.shape)
    low = z.min(1, keepdims=True).astype(np.float16).astype(np.float64)
    step = ((z.max(1, keepdims=True) - low) / self.levels).astype(np.float16)
    step = np.maximum(step.astype(np.float64), np.finfo(np.float16).tiny)
    return np.broadcast_to(low, z.shape), np.broadcast_to(low + step * self.levels, z.shape)

  def quantize(self, z) -> tuple[np.ndarray, np.ndarray]:
    """Integer levels (N, D) and per-image side info (N, 2) float16 (empty in 'global')."""
    z = np.asarray(z, np.float64)
    low, high = self._ranges(z)
    step = (high - low) / self.levels
    q = np.clip(np.floor((z - low) / step), 0, self.levels - 1).astype(np.int64)
    side = (np.stack([low[:, 0], step[:, 0]], 1).astype(np.float16) if self.mode == "per_image"
            else np.zeros((len(z), 0), np.float16))
    return q, side

  def dequantize(self, q, side=None) -> np.ndarray:
    """Latents (N, D) float32 at the centres of the cells of levels q (N, D)."""
    q = np.asarray(q, np.float64)
    if self.mode == "global":
      step = (self.high - self.low) / self.levels
      return (self.low + (q + 0.5) * step).astype(np.float32)
    low, step = (np.asarray(side, np.float64)[:, i:i + 1] for i in (0, 1))
    return (low + (q + 0.5) * step).astype(np.float32)

  def round_trip(self, z) -> np.ndarray:
    """What the decoder sees after quantisation, (N, D)."""
    return self.dequantize(*self.quantize(z))

  def pack(self, q_row, side_row=None) -> bytes:
    """The byte string of one image: side info (if any) then its packed levels."""
    head = b"" if self.mode == "global" else np.asarray(side_row, "<f2").tobytes()
    return head + pack_bits(q_row, self.bits)

  def unpack(self, payload: bytes, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels (1, dim) and side info (1, 2 or 0) from one image's byte string."""
    head = 0 if self.mode == "global" else SIDE_INFO_BYTES
    side = np.frombuffer(payload[:head], "<f2").reshape(1, -1)
    return unpack_bits(payload[head:], dim, self.bits)[None], side

  def bytes_per_image(self, dim: int) -> int:
    """Exact length of `pack` for a latent of `dim` values."""
    return (SIDE_INFO_BYTES if self.mode == "per_image" else 0) + packed_bytes(dim, self.bits)


def index_bits(num_codes: int) -> int:
  """Bits of one codebook index with a fixed-length code."""
  return max(1, math.ceil(math.log2(num_codes)))


def vq_bytes_per_image(num_indices: int, num_codes: int) -> int:
  """Bytes of `num_indices` VQ-VAE codebook indices, fixed-length and packed."""
  return packed_bytes(num_indices, index_bits(num_codes))


# ---- JPEG --------------------------------------------------------------------------

def _to_uint8(image) -> np.ndarray:
  return np.clip(np.round(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)


def jpeg_scan_bytes(jpeg: bytes) -> int:
  """Bytes of entropy-coded scan data in a baseline JPEG file: after the start-of-scan
  header and before the end-of-image marker (tables and headers excluded)."""
  pos = 2
  while pos + 4 <= len(jpeg):
    if jpeg[pos] != 0xFF:
      raise ValueError("not a JPEG marker sequence")
    marker = jpeg[pos + 1]
    length = int.from_bytes(jpeg[pos + 2:pos + 4], "big")
    if marker == 0xDA:
      start = pos + 2 + length
      end = jpeg.rfind(b"\xff\xd9")
      return end - start
    pos += 2 + length
  raise ValueError("no start-of-scan marker found")


def jpeg_round_trip(image, quality: int) -> tuple[np.ndarray, int, int]:
  """Encode one grey image (H, W[, 1]) in [0, 1] as JPEG at `quality` with Pillow.

  Returns the decoded image (H, W, 1) in [0, 1], the bytes of the whole file (with
  Huffman tables optimised for the image, the smaller file) and the bytes of the scan data
  coded with the standard tables (which a decoder can share, unlike per-image tables).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = _to_uint8(np.asarray(image).reshape(np.asarray(image).shape[:2]))
  files = {}
  for optimize in (False, True):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(quality), optimize=optimize)
    files[optimize] = buf.getvalue()
  decoded = np.asarray(Image.open(io.BytesIO(files[False])), np.float32) / 255.0
  return decoded[..., None], len(files[True]), jpeg_scan_bytes(files[False])


def jpeg_curve(images, qualities) -> list[dict]:
  """Mean file bytes, scan bytes and per-image reconstructions at each JPEG quality."""
  rows = []
  for q in qualities:
    outs = [jpeg_round_trip(im, q) for im in images]
    rows.append({"quality": int(q), "recon": np.stack([o[0] for o in outs]),
                 "file_bytes": float(np.mean([o[1] for o in outs])),
                 "scan_bytes": float(np.mean([o[2] for o in outs]))})
  return rows
