"""Exception types that carry a message a user can act on."""


class AeJaxError(Exception):
  """Base class of every error this package raises on purpose."""


class ConfigError(AeJaxError, ValueError):
  """A config value has the wrong type, is out of range, or names nothing known."""


class DataError(AeJaxError, ValueError):
  """Input data is missing, malformed, non-finite or of the wrong shape."""


class CheckpointError(AeJaxError, RuntimeError):
  """A checkpoint cannot be restored into the requested model."""


class NonFiniteError(AeJaxError, FloatingPointError):
  """Training produced a NaN or inf loss or gradient."""
