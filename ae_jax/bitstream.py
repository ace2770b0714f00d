"""Real bitstreams of quantised latents: range coding with `constriction`.

`encode(symbols, tables)` writes the integer symbols (N, C) of N examples, one stream per
example, into one byte string; `decode(data, tables)` reads them back exactly. The
layout:

    0xA2 / 0xA3     magic (high nibble 0xA) and format (low nibble): 2 the factorized
                    prior, 3 the scale hyperprior
    varint N        number of examples
    varint L_i      payload length of examples 0 .. N-2 (the last one runs to the check)
    payload_i       N range-coded payloads
    1 byte          check: CRC-32 (low 8 bits) of the tables' digest and every byte
                    above, so a corrupt stream, a truncated one, or one decoded with
                    another model's tables is refused (all but 1 in 256 of them: the
                    other 255 in 256 fail the check, and a stream that passes it by chance
                    still needs a valid layout and range-coder state to decode)

The number of symbols per example C is not written: the decoder knows it from the
tables, which also enter the check. Version 1 (0xAE 0x01, varint C, 2 check bytes)
spent 4 more bytes per stream; it is recognised and refused with a clear error.

Format 2 (factorized prior): a payload codes each symbol with its channel's categorical
table (`ae_jax.entropy.CodingTables`, one row per symbol). Format 3 (scale hyperprior,
`encode_hyperprior` / `decode_hyperprior`): a payload codes the side symbols z (one
table row per symbol, as format 2), then the latent symbols y, symbol i with row
indices[i] of the Gaussian tables; the decoder gets the indices from the decoded z
(`indices_of`), so only z and y are written. The y symbols are coded table by table
(ascending row, then position), one fixed model per row.

In both, a symbol outside its table's alphabet is coded as the escape, followed (after
all symbols of its part) by its side (1 of 2), bit length n (1 of 20) and its n - 1 low
bits. Range coder words are written big endian and trailing bytes are dropped when
decoding without them (read as zeros) still gives the same symbols, which the encoder
checks. `stream_bytes(symbols, tables)` is the length of each example's file on its own
(N = 1), every header byte included.
"""

import hashlib
import zlib

import numpy as np

from ae_jax.entropy import CodingTables
from ae_jax.errors import DataError

MAGIC = 0xA  # high nibble of the first byte
VERSION = 2  # low nibble of the first byte: the factorized prior
HYPERPRIOR_VERSION = 3  # low nibble of the first byte: the scale hyperprior
FORMATS = {VERSION: "the factorized prior (model.rd_prior='factorized')",
           HYPERPRIOR_VERSION: "the scale hyperprior (model.rd_prior='hyperprior')"}
HEAD = (MAGIC << 4) | VERSION
LEGACY_HEAD = 0xAE  # first byte of version 1 streams (its second byte was the version)
ESCAPE_BITS = 20  # escaped values differ from their alphabet's end by less than 2**20
CHECK_BYTES = 1


def _constriction():
  import constriction  # pylint: disable=g-import-not-at-top
  return constriction.stream


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
  value, shift = 0, 0
  while pos < end and shift < 63:
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    pos += 1
    if not byte & 0x80:
      return value, pos
    shift += 7
  raise DataError(f"bitstream is truncated or corrupt: cannot read {what}")


def _check(digest: bytes, body: bytes) -> bytes:
  crc = zlib.crc32(body, zlib.crc32(digest)) & ((1 << (8 * CHECK_BYTES)) - 1)
  return crc.to_bytes(CHECK_BYTES, "big")


def _split(symbols, lower, sizes, escape):
  """Alphabet indices (C,) int32 of symbols (C,) under per-symbol alphabets lower ..
  lower + sizes - 1 (values outside become `escape`), and the escaped values' (side,
  overflow) pairs in position order."""
  index = symbols.astype(np.int64) - lower
  below, above = index < 0, index >= sizes
  over = np.where(below, -index, index - sizes + 1)
  escaped = [(int(a), int(o)) for a, o in zip(above[below | above], over[below | above])]
  if any(o >= 2 ** ESCAPE_BITS for _, o in escaped):
    raise DataError(f"a latent symbol lies 2**{ESCAPE_BITS} or more beyond its channel's "
                    "alphabet; the model's latents are out of range for these tables")
  index = np.where(below | above, escape, index).astype(np.int32)
  return index, escaped


def _put_escapes(stream, encoder, escaped) -> None:
  for side, over in escaped:
    bits = over.bit_length()
    encoder.encode(side, stream.model.Uniform(2))
    encoder.encode(bits - 1, stream.model.Uniform(ESCAPE_BITS))
    if bits > 1:
      encoder.encode(over - (1 << (bits - 1)), stream.model.Uniform(2 ** (bits - 1)))


def _take_escapes(stream, decoder, symbols, positions, lower, sizes) -> None:
  """Replace symbols[positions] (escapes, in position order) by their escaped values."""
  for i in positions:
    side = int(decoder.decode(stream.model.Uniform(2)))
    bits = int(decoder.decode(stream.model.Uniform(ESCAPE_BITS))) + 1
    rest = int(decoder.decode(stream.model.Uniform(2 ** (bits - 1)))) if bits > 1 else 0
    over = (1 << (bits - 1)) + rest
    symbols[i] = lower[i] + sizes[i] - 1 + over if side else lower[i] - over


def _put_factorized(stream, encoder, symbols, tables: CodingTables) -> None:
  """Symbols (C,), symbol c with row c of the tables, then the escapes."""
  index, escaped = _split(symbols, tables.lower, tables.sizes, tables.escape)
  encoder.encode(index, stream.model.Categorical(perfect=False), tables.counts)
  _put_escapes(stream, encoder, escaped)


def _take_factorized(stream, decoder, tables: CodingTables) -> np.ndarray:
  index = np.asarray(decoder.decode(stream.model.Categorical(perfect=False), tables.counts),
                     np.int64)
  symbols = index + tables.lower
  _take_escapes(stream, decoder, symbols, np.flatnonzero(index == tables.escape),
                tables.lower, tables.sizes)
  return symbols.astype(np.int32)


def _row_models(stream, tables: CodingTables) -> list:
  """One fixed categorical model per table row over its alphabet and the escape (index
  sizes[k]), built once per tables object."""
  models = tables.__dict__.get("_row_models")
  if models is None:
    models = [stream.model.Categorical(
        np.append(tables.counts[k, :size], tables.counts[k, tables.escape]), perfect=False)
              for k, size in enumerate(tables.sizes)]
    tables.__dict__["_row_models"] = models
  return models


def _put_indexed(stream, encoder, symbols, tables: CodingTables, indices) -> None:
  """Symbols (C,), symbol i with row indices[i]: row by row (ascending), then the escapes."""
  lower, sizes = tables.lower[indices], tables.sizes[indices]
  index, escaped = _split(symbols, lower, sizes, sizes)
  models = _row_models(stream, tables)
  for k in np.unique(indices):
    encoder.encode(index[indices == k], models[k])
  _put_escapes(stream, encoder, escaped)


def _take_indexed(stream, decoder, tables: CodingTables, indices) -> np.ndarray:
  lower, sizes = tables.lower[indices], tables.sizes[indices]
  index = np.zeros(len(indices), np.int64)
  models = _row_models(stream, tables)
  for k in np.unique(indices):
    chosen = indices == k
    index[chosen] = decoder.decode(models[k], int(chosen.sum()))
  symbols = index + lower
  _take_escapes(stream, decoder, symbols, np.flatnonzero(index == sizes), lower, sizes)
  return symbols.astype(np.int32)


def _words(payload: bytes) -> np.ndarray:
  padded = payload + b"\0" * (-len(payload) % 4)
  return np.frombuffer(padded, ">u4").astype(np.uint32)


def _shortest(stream, encoder, read, expected) -> bytes:
  """The encoder's words as bytes without the trailing bytes (up to 3) that decoding
  does not need: read(decoder) must give back the arrays `expected`."""
  words = encoder.get_compressed().astype(">u4").tobytes()
  payload = words
  for cut in (1, 2, 3):
    if len(words) < cut:
      break
    try:
      got = read(stream.queue.RangeDecoder(_words(words[:-cut])))
      same = all(np.array_equal(g, e) for g, e in zip(got, expected))
    except (ValueError, RuntimeError, AssertionError):
      same = False
    if not same:
      break
    payload = words[:-cut]
  return payload


def encode_one(symbols, tables: CodingTables) -> bytes:
  """The range-coded payload of one example's symbols (C,), as short as decodes exactly."""
  stream = _constriction()
  symbols = np.asarray(symbols)
  encoder = stream.queue.RangeEncoder()
  _put_factorized(stream, encoder, symbols, tables)
  return _shortest(stream, encoder, lambda d: (_take_factorized(stream, d, tables),),
                   (symbols,))


def encode_one_hyperprior(side, symbols, side_tables: CodingTables, tables: CodingTables,
                          indices) -> bytes:
  """The payload of one example: side symbols z (Cz,) with `side_tables`, then latent
  symbols y (Cy,), y[i] with row indices[i] of `tables`; as short as decodes exactly."""
  stream = _constriction()
  side, symbols, indices = np.asarray(side), np.asarray(symbols), np.asarray(indices)
  encoder = stream.queue.RangeEncoder()
  _put_factorized(stream, encoder, side, side_tables)
  _put_indexed(stream, encoder, symbols, tables, indices)

  def read(decoder):
    return (_take_factorized(stream, decoder, side_tables),
            _take_indexed(stream, decoder, tables, indices))
  return _shortest(stream, encoder, read, (side, symbols))


def _layout(data: bytes, digest: bytes, version: int = VERSION):
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise DataError(f"a bitstream must be bytes, got {type(data).__name__}")
  data = bytes(data)
  if len(data) < 2 + CHECK_BYTES:
    raise DataError(f"bitstream of {len(data)} bytes is too short to hold a header: "
                    "it is truncated or not an ae_jax bitstream")
  if data[0] == LEGACY_HEAD and len(data) > 1 and data[1] == 1:
    raise DataError("bitstream format version 1 is not supported (this ae_jax reads "
                    f"version {VERSION}): compress the data again")
  if data[0] >> 4 != MAGIC:
    raise DataError(f"not an ae_jax bitstream (first byte 0x{data[0]:02x}, expected "
                    f"0x{HEAD:02x})")
  if data[0] & 0xF not in FORMATS:
    raise DataError(f"bitstream format version {data[0] & 0xF} is not supported (this "
                    f"ae_jax reads versions {', '.join(map(str, FORMATS))})")
  if data[0] & 0xF != version:
    raise DataError(f"this bitstream was written by a codec with {FORMATS[data[0] & 0xF]}, "
                    f"but this codec uses {FORMATS[version]}: decompress it with the model "
                    "that wrote it")
  end = len(data) - CHECK_BYTES
  if data[end:] != _check(digest, data[:end]):
    raise DataError("bitstream check failed: the data is corrupt or truncated, or it was "
                    "written by a model with other entropy tables than this one")
  count, pos = _read_varint(data, 1, end, "the number of examples")
  lengths = []
  for i in range(max(count - 1, 0)):
    length, pos = _read_varint(data, pos, end, f"the length of example {i}")
    lengths.append(length)
  if count:
    lengths.append(end - pos - sum(lengths))
  if any(length < 0 for length in lengths):
    raise DataError("bitstream is corrupt: its payload lengths exceed its size")
  return data, pos, lengths


def _join(payloads, version: int, digest: bytes) -> bytes:
  head = bytearray([(MAGIC << 4) | version])
  head += _varint(len(payloads))
  for payload in payloads[:-1]:
    head += _varint(len(payload))
  body = bytes(head) + b"".join(payloads)
  return body + _check(digest, body)


def _check_symbols(symbols, size: int, what: str = "symbols") -> np.ndarray:
  symbols = np.asarray(symbols)
  if symbols.ndim != 2 or symbols.shape[1] != size:
    raise DataError(f"{what} must be (N, {size}), got shape {symbols.shape}")
  if not np.issubdtype(symbols.dtype, np.integer):
    raise DataError(f"{what} must be integers, got dtype {symbols.dtype}")
  return symbols


def encode(symbols, tables: CodingTables) -> bytes:
  """One byte string holding the symbols (N, C) int of N examples (layout above)."""
  symbols = _check_symbols(symbols, len(tables.sizes))
  return _join([encode_one(row, tables) for row in symbols], VERSION, tables.digest())


def _read_payloads(data, digest: bytes, version: int, read) -> list:
  """read(decoder) of each payload of a stream, with corrupt payloads as DataErrors."""
  stream = _constriction()
  data, pos, lengths = _layout(data, digest, version)
  rows = []
  for i, length in enumerate(lengths):
    try:
      rows.append(read(stream, stream.queue.RangeDecoder(_words(data[pos:pos + length]))))
    except (ValueError, RuntimeError, AssertionError, IndexError) as e:
      raise DataError(f"bitstream is corrupt: example {i} cannot be decoded ({e})") from e
    pos += length
  return rows


def decode(data: bytes, tables: CodingTables) -> np.ndarray:
  """The symbols (N, C) int32 of a byte string written by `encode` with these tables."""
  rows = _read_payloads(data, tables.digest(), VERSION,
                        lambda stream, d: _take_factorized(stream, d, tables))
  return np.stack(rows) if rows else np.zeros((0, len(tables.sizes)), np.int32)


def hyperprior_digest(side_tables: CodingTables, tables: CodingTables) -> bytes:
  """What the check of a hyperprior stream covers: both sets of tables."""
  return hashlib.sha256(side_tables.digest() + tables.digest()).digest()


def encode_hyperprior(side, symbols, side_tables: CodingTables, tables: CodingTables,
                      indices) -> bytes:
  """One byte string (format 3) holding N examples' side symbols z (N, Cz) and latent
  symbols y (N, Cy), y[n, i] coded with row indices[n, i] (N, Cy) of `tables`."""
  side = _check_symbols(side, len(side_tables.sizes), "side symbols")
  symbols, indices = np.asarray(symbols), np.asarray(indices)
  if symbols.ndim != 2 or indices.shape != symbols.shape or len(side) != len(symbols):
    raise DataError(f"side symbols {side.shape}, symbols {symbols.shape} and table indices "
                    f"{indices.shape} must hold the same examples, one index per symbol")
  symbols = _check_symbols(symbols, symbols.shape[1])
  if indices.size and (indices.min() < 0 or indices.max() >= len(tables.sizes)):
    raise DataError(f"table indices must lie in [0, {len(tables.sizes)})")
  payloads = [encode_one_hyperprior(z, y, side_tables, tables, i)
              for z, y, i in zip(side, symbols, indices)]
  return _join(payloads, HYPERPRIOR_VERSION, hyperprior_digest(side_tables, tables))


def decode_hyperprior(data: bytes, side_tables: CodingTables, tables: CodingTables,
                      indices_of, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(side symbols (N, Cz), latent symbols (N, size)) int32 of a byte string from
  `encode_hyperprior`; indices_of(z) (Cz,) -> (size,) gives one example's table rows from
  its decoded side symbols, as the encoder computed them."""
  def read(stream, decoder):
    side = _take_factorized(stream, decoder, side_tables)
    return side, _take_indexed(stream, decoder, tables, np.asarray(indices_of(side)))
  rows = _read_payloads(data, hyperprior_digest(side_tables, tables), HYPERPRIOR_VERSION, read)
  if not rows:
    return np.zeros((0, len(side_tables.sizes)), np.int32), np.zeros((0, size), np.int32)
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def header_bytes(count: int, payload_lengths=()) -> int:
  """Bytes of a stream's header and check for `count` examples (with the payload lengths
  of the first count - 1)."""
  return (1 + len(_varint(count))
          + sum(len(_varint(n)) for n in list(payload_lengths)[:max(count - 1, 0)])
          + CHECK_BYTES)


def stream_bytes(symbols, tables: CodingTables) -> np.ndarray:
  """Length in bytes of each example's stream on its own (`encode` of that one row,
  header and check included), (N,) int."""
  symbols = np.asarray(symbols)
  return np.asarray([len(encode(row[None], tables)) for row in symbols], np.int64)
