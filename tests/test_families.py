"""Families added as one file each: the contractive autoencoder, and the registries being
complete once `ae_jax` is imported."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import configs, families, train


@pytest.fixture
def cfg():
  c = configs.get_preset("default")
  c.model.family = "contractive"
  c.model.latent_dim = 3
  return c


def test_contractive_penalty_of_a_linear_encoder_is_the_weight_norm(cfg):
  """With no hidden layer the encoder is x -> W x + b, whose Jacobian is W: the penalty is
  sum(W^2) for every example."""
  cfg.model.widths = ()
  model = families.build_model(cfg, (5,))
  params = jax.jit(lambda k: train.init_params(model, (5,), k))(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 5))
  # Compiled as one program: run eagerly, each primitive of the Jacobian compiles alone.
  penalty = jax.jit(lambda p, x: families.contractive.jacobian_penalty(model, p, x))(params, x)
  w = params["params"]["to_latent"]["kernel"]
  np.testing.assert_allclose(penalty, np.full(4, float(jnp.sum(w ** 2))), rtol=1e-5)


def test_contractive_terms_add_the_weighted_penalty(cfg):
  cfg.objective.contractive_weight = 0.5
  model = families.build_model(cfg, (6,))
  params = jax.jit(lambda k: train.init_params(model, (6,), k))(jax.random.key(0))
  x = jax.random.uniform(jax.random.key(1), (8, 6))
  keys = jax.random.split(jax.random.key(2), 8)
  terms = families.get_family("contractive").terms
  t = jax.jit(lambda p, x, k: terms(model, p, {"x": x}, k, 0, cfg, True))(params, x, keys)
  np.testing.assert_allclose(t["loss"], t["recon"] + 0.5 * t["jacobian_norm"], rtol=1e-6)
  assert t["loss"].shape == (8,)
  # a relu MLP's Jacobian changes with x: the penalty differs between examples
  assert float(jnp.std(t["jacobian_norm"])) > 0


def test_contractive_rejects_a_negative_weight(cfg):
  cfg.objective.contractive_weight = -1.0
  with pytest.raises(families.base.ConfigError, match="contractive_weight"):
    families.build_model(cfg, (6,))


def test_every_family_field_is_in_the_default_config():
  c = configs.get_preset("default")
  for name in families.FAMILIES:
    for key in families.get_family(name).fields:
      section, field = key.split(".")
      assert field in c[section], (name, key)


def test_registries_are_complete_after_importing_ae_jax():
  """Variants that applications use are registered without importing the applications."""
  code = ("import ae_jax; from ae_jax.families import FAMILIES; "
          "from ae_jax.networks import NETWORKS; from ae_jax.corruption import CORRUPTIONS; "
          "import sys; assert 'ae_jax.applications' not in sys.modules; "
          "assert {'spatial_denoising', 'contractive'} <= set(FAMILIES), FAMILIES.names(); "
          "assert 'subpixel' in NETWORKS; "
          "assert {'noise_wander', 'downsample'} <= set(CORRUPTIONS)")
  subprocess.run([sys.executable, "-c", code], check=True)
