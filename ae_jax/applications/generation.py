"""Generation with VAEs on binarised images: configs, likelihood estimates, samples,
interpolations, fine-tuning and a reference PyTorch VAE of the same architecture.

Images are (N, H, W, 1) arrays in [0, 1]. Training binarises each batch afresh
(`objective.binarize`); evaluation uses one fixed binarisation of the test images
(`binarize_fixed`), so every model is scored on the same binary pixels.
"""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import configs, data as data_lib, families, likelihood, parallel
from ae_jax.fit import Trained
from ae_jax.train import create_train_state, eval_params, train_step, with_eval_params


def vae_config(*, latent_dim: int = 20, widths=(500, 500), iw_samples: int = 1,
               epochs: int = 10, batch_size: int = 100, learning_rate: float = 1e-3,
               family: str = "vae", activation: str = "relu",
               seed: int = 0) -> ml_collections.ConfigDict:
  """Config of a Bernoulli MLP VAE (or IWAE with iw_samples > 1) on dynamically binarised
  images, trained with Adam on one device without validation or checkpoints."""
  cfg = configs.get_preset("default")
  cfg.seed = seed
  cfg.data.val_fraction = 0.0
  cfg.model.family = family
  cfg.model.network = "mlp"
  cfg.model.recon_loss = "bce"
  cfg.model.widths = tuple(widths)
  cfg.model.latent_dim = latent_dim
  cfg.model.activation = activation
  cfg.objective.binarize = True
  cfg.objective.iw_samples = iw_samples
  cfg.optim.learning_rate = learning_rate
  cfg.train.batch_size = batch_size
  cfg.train.num_epochs = epochs
  cfg.train.parallel = "jit"
  cfg.train.figures = False
  cfg.train.log_every = 10 ** 9
  cfg.train.eval_every = 10 ** 9
  cfg.train.checkpoint_every = 10 ** 9
  return cfg


def binarize_fixed(x, seed: int = 0) -> np.ndarray:
  """One Bernoulli(x) draw of every pixel, reproducible from `seed`; same shape as x."""
  x = np.asarray(x, np.float32)
  return (np.random.RandomState(seed).random_sample(x.shape) < x).astype(np.float32)


def _cond_args(cond, start, stop):
  return () if cond is None else (jnp.asarray(cond[start:stop]),)


def _likelihood(cfg) -> str:
  """The part of a config that the likelihood estimators read, as a hashable cache key."""
  return json.dumps({"model": {"recon_loss": cfg.model.recon_loss},
                     "objective": {"output_sigma": float(cfg.objective.output_sigma)}})


def estimate_nll(trained: Trained, x, *, num_samples: int = 5000, chunk: int = 500,
             batch_size: int = 100, seed: int = 0, cond=None) -> np.ndarray:
  """-log p(x) in nats by importance sampling with `num_samples` posterior draws.

  x: binary images (N, *input_shape); returns (N,). Each batch gets its own key.
  """
  fn = likelihood.nll_fn(trained.model, _likelihood(trained.config), num_samples,
                         min(chunk, num_samples), cond is not None)
  x = np.asarray(x, np.float32)
  out = []
  for i, start in enumerate(range(0, len(x), batch_size)):
    stop = start + batch_size
    key = jax.random.fold_in(jax.random.key(seed), i)
    out.append(np.asarray(fn(trained.params, jnp.asarray(x[start:stop]), key,
                             *_cond_args(cond, start, stop))))
  return np.concatenate(out)


def estimate_elbo(trained: Trained, x, *, num_samples: int = 1, batch_size: int = 500,
              seed: int = 0, cond=None) -> dict[str, np.ndarray]:
  """Per-example ELBO (analytic KL, `num_samples` draws) and the `num_samples`-sample
  importance-weighted bound, in nats, for binary images x (N, ...): {'elbo', 'iw_bound'}."""
  fn = likelihood.elbo_fn(trained.model, _likelihood(trained.config), cond is not None,
                          num_samples)
  x = np.asarray(x, np.float32)
  parts = {"elbo": [], "iw_bound": []}
  for i, start in enumerate(range(0, len(x), batch_size)):
    stop = start + batch_size
    res = fn(trained.params, jnp.asarray(x[start:stop]), jax.random.fold_in(
        jax.random.key(seed), i), *_cond_args(cond, start, stop))
    for k in parts:
      parts[k].append(np.asarray(res[k]))
  return {k: np.concatenate(v) for k, v in parts.items()}


def interpolate(trained: Trained, x_from, x_to, steps: int = 10) -> np.ndarray:
  """Decodings along the straight line between the posterior means of two images.

  x_from, x_to: (*input_shape); returns (steps, *input_shape) pixel probabilities.
  """
  z = trained.encode(np.stack([x_from, x_to]))
  t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
  return trained.decode((1 - t) * z[0] + t * z[1])


def perturb_latents(trained: Trained, x, copies: int, scale: float = 1.0,
                    seed: int = 0) -> np.ndarray:
  """`copies` decodings per image of z = mean + scale * sigma * eps from q(z|x).

  x: (N, *input_shape); returns (N * copies, *input_shape), image i's copies together.
  """
  mean, logvar = trained.model.apply(trained.params, jnp.asarray(x, jnp.float32),
                                     method=trained.model.posterior)
  eps = jax.random.normal(jax.random.key(seed), (mean.shape[0], copies, mean.shape[1]))
  z = mean[:, None] + scale * jnp.exp(0.5 * logvar)[:, None] * eps
  return trained.decode(np.asarray(z.reshape(-1, mean.shape[1])))


def finetune(trained: Trained, data: data_lib.ArrayData, *, epochs: int,
             learning_rate: float | None = None, seed: int = 0) -> Trained:
  """Continue training `trained` on `data` (a fresh optimizer state) for `epochs` epochs.

  Uses the model's own objective and train step; returns a new `Trained`.
  """
  cfg = ml_collections.ConfigDict(trained.config.to_dict())
  cfg.train.num_epochs = epochs
  if learning_rate is not None:
    cfg.optim.learning_rate = learning_rate
  batch_size = min(cfg.train.batch_size, len(data))
  cfg.train.batch_size = batch_size
  steps = max(1, epochs * (len(data) // batch_size))
  family = families.get_family(cfg.model.family)
  # Both the parameters and (optim.ema_decay > 0) their moving average start from the model's.
  state = with_eval_params(create_train_state(cfg, trained.model, trained.input_shape,
                                              jax.random.key(seed), steps),
                           jax.tree.map(jnp.copy, trained.params))
  step_fn = parallel.compile_step(
      functools.partial(train_step, model=trained.model, family=family, config=cfg), "jit")
  x = trained.scaler.transform(np.asarray(data.x, np.float32))
  loader = iter(data_lib.make_train_loader(dataclasses.replace(data, x=x),
                                           batch_size=batch_size, seed=seed))
  rng = jax.random.key(seed + 1)
  for _ in range(steps):
    state, _ = step_fn(state, parallel.host_batch(next(loader)), rng)
  return dataclasses.replace(trained, config=cfg, params=eval_params(state),
                             step=trained.step + steps)


# ---- the reference PyTorch VAE ------------------------------------------------------

def torch_available() -> bool:
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _torch_vae(input_size: int, widths, latent_dim: int, activation: str):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  acts = {"relu": nn.ReLU, "tanh": nn.Tanh}

  def mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
      layers += [nn.Linear(a, b), acts[activation]()]
    return layers

  class TorchVAE(nn.Module):
    """The same MLP VAE as `vae_config`: encoder widths, a Gaussian posterior, mirror decoder."""

    def __init__(self):
      super().__init__()
      self.encoder = nn.Sequential(*mlp([input_size, *widths]))
      self.to_mean = nn.Linear(widths[-1], latent_dim)
      self.to_logvar = nn.Linear(widths[-1], latent_dim)
      rev = list(reversed(widths))
      self.decoder = nn.Sequential(*mlp([latent_dim, *rev]), nn.Linear(rev[-1], input_size))

    def forward(self, x):
      h = self.encoder(x)
      mean, logvar = self.to_mean(h), self.to_logvar(h)
      z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
      return self.decoder(z), mean, logvar

  return TorchVAE()


def train_torch_vae(x, *, epochs: int, widths=(500, 500), latent_dim: int = 20,
                    batch_size: int = 100, learning_rate: float = 1e-3,
                    activation: str = "relu", seed: int = 0):
  """Train the reference PyTorch VAE on dynamically binarised x (N, ...) in [0, 1].

  Same objective (negative ELBO, Bernoulli likelihood, analytic KL), optimizer, batch size
  and epochs as the JAX model; drops the last partial batch like the JAX loader.
  Returns (module, per-epoch mean loss list).
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  flat = torch.as_tensor(np.asarray(x, np.float32).reshape(len(x), -1))
  net = _torch_vae(flat.shape[1], tuple(widths), latent_dim, activation)
  opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
  gen = torch.Generator().manual_seed(seed)
  history = []
  for _ in range(epochs):
    order = torch.randperm(len(flat), generator=gen)
    total, count = 0.0, 0
    for start in range(0, len(flat) - batch_size + 1, batch_size):
      xb = torch.bernoulli(flat[order[start:start + batch_size]], generator=gen)
      logits, mean, logvar = net(xb)
      rec = F.binary_cross_entropy_with_logits(logits, xb, reduction="none").sum(1)
      kl = 0.5 * (logvar.exp() + mean.square() - 1.0 - logvar).sum(1)
      loss = (rec + kl).mean()
      opt.zero_grad()
      loss.backward()
      opt.step()
      total += loss.item() * len(xb)
      count += len(xb)
    history.append(total / count)
  return net, history


def torch_to_trained(net, cfg: ml_collections.ConfigDict, input_shape) -> Trained:
  """The PyTorch VAE's weights in the JAX model of `cfg`, so both are scored by the same
  estimators. Linear weights (out, in) become Dense kernels (in, out)."""
  model = families.build_model(cfg, input_shape)
  params = create_train_state(cfg, model, input_shape, jax.random.key(0), 1).params
  linears = lambda seq: [m for m in seq if hasattr(m, "weight")]
  dense = lambda lin: {"kernel": jnp.asarray(lin.weight.detach().numpy().T),
                       "bias": jnp.asarray(lin.bias.detach().numpy())}
  p = jax.tree.map(lambda a: a, params["params"])
  p["encoder"] = {f"Dense_{i}": dense(m) for i, m in enumerate(linears(net.encoder))}
  p["decoder"] = {f"Dense_{i}": dense(m) for i, m in enumerate(linears(net.decoder))}
  p["to_mean"], p["to_logvar"] = dense(net.to_mean), dense(net.to_logvar)
  new = {"params": p}
  if jax.tree.structure(new) != jax.tree.structure(params):
    raise ValueError("the PyTorch VAE does not match the JAX model of this config")
  return Trained(cfg, model, new, data_lib.Scaler("none").fit(np.zeros((1, *input_shape))),
                 tuple(input_shape))


def nll_summary(values) -> dict[str, float]:
  """Mean and standard error of per-example values (N,)."""
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()),
          "sem": float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0}
