"""Real bitstreams of quantised latents: range coding with `constriction`.

`encode(symbols, tables)` writes the integer symbols (N, C) of N examples, one stream per
example, into one byte string; `decode(data, tables)` reads them back exactly. The
layout (version 2):

    0xA2            magic (high nibble 0xA) and format version (low nibble, 2)
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

A payload codes each symbol with its channel's categorical table
(`ae_jax.entropy.CodingTables`); a symbol outside its channel's alphabet is coded as the
escape, followed (after all symbols) by its side (1 of 2), bit length n (1 of 20) and its
n - 1 low bits. Range coder words are written big endian and trailing bytes are dropped
when decoding without them (read as zeros) still gives the same symbols, which the
encoder checks. `stream_bytes(symbols, tables)` is the length of each example's file on
its own (N = 1), every header byte included.
"""

import zlib

import numpy as np

from ae_jax.entropy import CodingTables
from ae_jax.errors import DataError

MAGIC = 0xA  # high nibble of the first byte
VERSION = 2  # low nibble of the first byte
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


def _check(tables: CodingTables, body: bytes) -> bytes:
  crc = zlib.crc32(body, zlib.crc32(tables.digest())) & ((1 << (8 * CHECK_BYTES)) - 1)
  return crc.to_bytes(CHECK_BYTES, "big")


def _split(symbols, tables: CodingTables):
  """Alphabet indices (C,) int32 and the escaped values' (side, overflow) pairs."""
  index = symbols.astype(np.int64) - tables.lower
  below, above = index < 0, index >= tables.sizes
  over = np.where(below, -index, index - tables.sizes + 1)
  escaped = [(int(a), int(o)) for a, o in zip(above[below | above], over[below | above])]
  if any(o >= 2 ** ESCAPE_BITS for _, o in escaped):
    raise DataError(f"a latent symbol lies 2**{ESCAPE_BITS} or more beyond its channel's "
                    "alphabet; the model's latents are out of range for these tables")
  index = np.where(below | above, tables.escape, index).astype(np.int32)
  return index, escaped


def _words(payload: bytes) -> np.ndarray:
  padded = payload + b"\0" * (-len(payload) % 4)
  return np.frombuffer(padded, ">u4").astype(np.uint32)


def _decode_payload(stream, payload: bytes, tables: CodingTables) -> np.ndarray:
  decoder = stream.queue.RangeDecoder(_words(payload))
  index = np.asarray(decoder.decode(stream.model.Categorical(perfect=False), tables.counts),
                     np.int64)
  symbols = index + tables.lower
  for channel in np.flatnonzero(index == tables.escape):
    side = int(decoder.decode(stream.model.Uniform(2)))
    bits = int(decoder.decode(stream.model.Uniform(ESCAPE_BITS))) + 1
    rest = int(decoder.decode(stream.model.Uniform(2 ** (bits - 1)))) if bits > 1 else 0
    over = (1 << (bits - 1)) + rest
    symbols[channel] = (tables.lower[channel] + tables.sizes[channel] - 1 + over if side
                        else tables.lower[channel] - over)
  return symbols.astype(np.int32)


def encode_one(symbols, tables: CodingTables) -> bytes:
  """The range-coded payload of one example's symbols (C,), as short as decodes exactly."""
  stream = _constriction()
  symbols = np.asarray(symbols)
  index, escaped = _split(symbols, tables)
  encoder = stream.queue.RangeEncoder()
  encoder.encode(index, stream.model.Categorical(perfect=False), tables.counts)
  for side, over in escaped:
    bits = over.bit_length()
    encoder.encode(side, stream.model.Uniform(2))
    encoder.encode(bits - 1, stream.model.Uniform(ESCAPE_BITS))
    if bits > 1:
      encoder.encode(over - (1 << (bits - 1)), stream.model.Uniform(2 ** (bits - 1)))
  words = encoder.get_compressed().astype(">u4").tobytes()
  payload = words
  for cut in (1, 2, 3):
    if len(words) < cut:
      break
    try:
      same = np.array_equal(_decode_payload(stream, words[:-cut], tables), symbols)
    except (ValueError, RuntimeError, AssertionError):
      same = False
    if not same:
      break
    payload = words[:-cut]
  return payload


def _layout(data: bytes, tables: CodingTables):
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
  if data[0] & 0xF != VERSION:
    raise DataError(f"bitstream format version {data[0] & 0xF} is not supported (this "
                    f"ae_jax reads version {VERSION})")
  end = len(data) - CHECK_BYTES
  if data[end:] != _check(tables, data[:end]):
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


def encode(symbols, tables: CodingTables) -> bytes:
  """One byte string holding the symbols (N, C) int of N examples (layout above)."""
  symbols = np.asarray(symbols)
  if symbols.ndim != 2 or symbols.shape[1] != len(tables.sizes):
    raise DataError(f"symbols must be (N, {len(tables.sizes)}), got shape {symbols.shape}")
  if not np.issubdtype(symbols.dtype, np.integer):
    raise DataError(f"symbols must be integers, got dtype {symbols.dtype}")
  payloads = [encode_one(row, tables) for row in symbols]
  head = bytearray([HEAD])
  head += _varint(len(payloads))
  for payload in payloads[:-1]:
    head += _varint(len(payload))
  body = bytes(head) + b"".join(payloads)
  return body + _check(tables, body)


def decode(data: bytes, tables: CodingTables) -> np.ndarray:
  """The symbols (N, C) int32 of a byte string written by `encode` with these tables."""
  stream = _constriction()
  data, pos, lengths = _layout(data, tables)
  rows = []
  for i, length in enumerate(lengths):
    try:
      rows.append(_decode_payload(stream, data[pos:pos + length], tables))
    except (ValueError, RuntimeError, AssertionError) as e:
      raise DataError(f"bitstream is corrupt: example {i} cannot be decoded ({e})") from e
    pos += length
  return np.stack(rows) if rows else np.zeros((0, len(tables.sizes)), np.int32)


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
