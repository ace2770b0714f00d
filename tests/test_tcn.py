"""The dilated (temporal) convolution network `tcn1d`: layer values, gradients, receptive
field, and a detector on sequences."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from ae_jax import configs
from ae_jax.errors import ConfigError
from ae_jax.networks import NETWORKS, DilatedConv1D


@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 4), (2, 3), (5, 2), (1, 1)])
def test_dilated_conv_equals_xla_dilated_convolution_and_its_gradients(kernel_size, dilation):
  x = jax.random.normal(jax.random.key(0), (2, 13, 3))
  layer = DilatedConv1D(4, kernel_size, dilation)
  params = layer.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1, params)   # a non-zero bias
  kernel, bias = params["params"]["kernel"], params["params"]["bias"]
  chex.assert_shape(kernel, (kernel_size, 3, 4))

  def by_xla(kernel, bias, x):
    return lax.conv_general_dilated(x, kernel, (1,), "SAME", rhs_dilation=(dilation,),
                                    dimension_numbers=("NWC", "WIO", "NWC")) + bias

  ours = lambda kernel, bias, x: layer.apply({"params": {"kernel": kernel, "bias": bias}}, x)
  out = ours(kernel, bias, x)
  chex.assert_shape(out, (2, 13, 4))
  np.testing.assert_allclose(out, by_xla(kernel, bias, x), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
  got = jax.grad(loss(ours), argnums=(0, 1, 2))(kernel, bias, x)
  want = jax.grad(loss(by_xla), argnums=(0, 1, 2))(kernel, bias, x)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_receptive_field_doubles_per_layer():
  """Encoder layers dilated 1, 2, 4 with kernel 3 see 1 + 2 * (1 + 2 + 4) = 15 steps: a
  change at step 20 moves the encoder's features at steps 13..27 only."""
  cfg = configs.get_preset("default").model
  cfg.channels, cfg.kernel_size, cfg.activation = (3, 3, 3), 3, "tanh"  # no dead units
  encoder, _ = NETWORKS.get("tcn1d")(cfg, (40, 1), 8)
  x = jax.random.normal(jax.random.key(0), (1, 40, 1))
  params = encoder.init(jax.random.key(1), x)
  base = encoder.apply(params, x).reshape(40, 3)
  moved = encoder.apply(params, x.at[0, 20, 0].add(3.0)).reshape(40, 3)
  changed = np.flatnonzero(np.abs(np.asarray(moved - base)).max(-1) > 1e-6)
  assert changed.min() >= 13 and changed.max() <= 27
  assert {13, 27} <= set(changed.tolist())


def test_tcn_rejects_other_shapes_and_detector_trains_on_sequences():
  from sklearn.metrics import roc_auc_score
  from ae_jax.anomaly import AutoencoderDetector
  cfg = ml_collections.ConfigDict(configs.get_preset("default").model.to_dict())
  with pytest.raises(ConfigError, match=r"tcn1d' expects sequences of shape \(T, C\)"):
    NETWORKS.get("tcn1d")(cfg, (8, 8, 1), 4)
  rng = np.random.default_rng(0)
  t = np.linspace(0, 2 * np.pi, 30)
  normal = np.sin(t + rng.uniform(0, 0.3, (200, 1))) + 0.05 * rng.normal(size=(200, 30))
  spiky = np.sin(t + rng.uniform(0, 0.3, (20, 1))) + 0.05 * rng.normal(size=(20, 30))
  spiky[np.arange(20), rng.integers(5, 25, 20)] += 2.0
  det = AutoencoderDetector(network="tcn1d", channels=(8, 8), score="mse", ensemble=1,
                            max_steps=150, patience=0, seed=0)
  det.fit(normal[:150].astype(np.float32))   # (N, T): a channel axis is added
  evals = [h["loss"] for h in det.history_[0] if h["split"] == "eval"]
  assert evals[-1] < 0.5 * evals[0]    # the held-out reconstruction loss falls
  x = np.concatenate([normal[150:], spiky]).astype(np.float32)
  scores = det.decision_function(x)
  chex.assert_shape(scores, (70,))
  assert roc_auc_score(np.r_[np.zeros(50), np.ones(20)], scores) > 0.9
