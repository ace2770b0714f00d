"""`model.init`: Flax's initialisers (the default) or PyTorch's nn.Linear / nn.Conv ones."""

import math

import jax
import numpy as np
import pytest
from flax import traverse_util

from ae_jax import configs, families, networks
from ae_jax.errors import ConfigError
from ae_jax.train import create_train_state


def _vae_cfg(init):
  cfg = configs.get_preset("default")
  cfg.model.family, cfg.model.recon_loss = "vae", "bce"
  cfg.model.widths, cfg.model.latent_dim = (400,), 40
  cfg.model.prior, cfg.model.vamp_components = "vamp", 5
  cfg.model.init = init
  return cfg


def _layers(params):
  """{layer path: {'kernel': array, 'bias': array}} of every dense or conv layer."""
  out = {}
  for keys, leaf in traverse_util.flatten_dict(params).items():
    if keys[-1] in ("kernel", "bias"):
      out.setdefault(keys[:-1], {})[keys[-1]] = np.asarray(leaf)
  return out


def test_torch_init_draws_kernels_and_biases_uniform_in_one_over_root_fan_in():
  cfg = _vae_cfg("torch")
  model = families.build_model(cfg, (784,))
  torch_p = create_train_state(cfg, model, (784,), jax.random.key(0), 1).params
  cfg_flax = _vae_cfg("flax")
  flax_p = create_train_state(cfg_flax, families.build_model(cfg_flax, (784,)), (784,),
                              jax.random.key(0), 1).params
  layers = _layers(torch_p)
  assert len(layers) == 5   # encoder 784-400, mean and log-variance heads, decoder 40-400-784
  for path, layer in layers.items():
    fan_in = layer["kernel"].shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    for name, w in layer.items():
      assert np.abs(w).max() <= bound, (path, name)
      # uniform on [-b, b]: variance b^2 / 3, and the draw fills the interval
      assert w.var() == pytest.approx(bound ** 2 / 3, rel=0.15 if w.size > 1000 else 0.5)
      assert np.abs(w).max() > 0.9 * bound
    flax_layer = _layers(flax_p)[path]
    assert not np.any(flax_layer["bias"])                     # Flax: zero biases
    assert flax_layer["kernel"].var() == pytest.approx(1 / fan_in, rel=0.15)   # LeCun normal
  # parameters that are not layers (the VampPrior's pseudo-inputs) are left as drawn
  assert [k for k in traverse_util.flatten_dict(torch_p) if "pseudo_inputs" in k]
  np.testing.assert_array_equal(
      np.asarray(torch_p["params"]["pseudo_inputs"]), np.asarray(flax_p["params"]["pseudo_inputs"]))


def test_torch_init_fan_in_of_a_conv_kernel_counts_the_window():
  params = {"params": {"conv": {"kernel": np.zeros((3, 3, 8, 16), np.float32),
                                "bias": np.zeros((16,), np.float32)},
                       "norm": {"scale": np.ones((16,), np.float32)}}}
  out = networks.torch_style_init(params, jax.random.key(1))
  bound = 1 / math.sqrt(3 * 3 * 8)
  for name in ("kernel", "bias"):
    w = np.asarray(out["params"]["conv"][name])
    assert w.shape == params["params"]["conv"][name].shape and w.dtype == np.float32
    assert 0.8 * bound < np.abs(w).max() <= bound
  np.testing.assert_array_equal(out["params"]["norm"]["scale"], 1.0)
  # the same key gives the same draw, another key another one
  again = networks.torch_style_init(params, jax.random.key(1))
  other = networks.torch_style_init(params, jax.random.key(2))
  np.testing.assert_array_equal(out["params"]["conv"]["kernel"], again["params"]["conv"]["kernel"])
  assert not np.allclose(out["params"]["conv"]["kernel"], other["params"]["conv"]["kernel"])


def test_unknown_init_is_a_config_error():
  cfg = _vae_cfg("kaiming")
  with pytest.raises(ConfigError, match="model.init must be one of flax, torch, got 'kaiming'"):
    families.validate_config(cfg, (784,))
