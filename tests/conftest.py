"""Shared test setup: 8 virtual CPU devices (set before jax is imported) and fixtures."""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ae_jax import configs  # noqa: E402


@pytest.fixture
def cfg():
  """A fresh copy of the 'tiny' preset; tests may change it freely."""
  return configs.get_preset("tiny")


@pytest.fixture(scope="session")
def digits_data():
  """scikit-learn digits as (images (N, 8, 8, 1) float32 in [0, 1], labels (N,) int32)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  return x, digits.target.astype(np.int32)


@pytest.fixture(scope="session")
def digits(digits_data):
  """Digits images (N, 8, 8, 1) float32 in [0, 1]."""
  return digits_data[0]


@pytest.fixture(scope="session")
def digits_labels(digits_data):
  """Digits labels (N,) int32."""
  return digits_data[1]
