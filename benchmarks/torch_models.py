"""PyTorch twins of the benchmarked networks (same layers, widths, kernels and strides as
`benchmarks.architectures`), and a copy of Flax MLP parameters into them.

Import only where torch is installed (`pip install -e ".[compare]"`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from benchmarks import architectures


def _mlp_encoder(in_features: int) -> list[nn.Module]:
  layers, width_in = [], in_features
  for width in architectures.MLP_WIDTHS:
    layers += [nn.Linear(width_in, width), nn.ReLU()]
    width_in = width
  return layers


def _mlp_decoder(out_features: int) -> list[nn.Module]:
  layers, width_in = [], architectures.LATENT_DIM
  for width in reversed(architectures.MLP_WIDTHS):
    layers += [nn.Linear(width_in, width), nn.ReLU()]
    width_in = width
  return layers + [nn.Linear(width_in, out_features)]


class Autoencoder(nn.Module):
  """Encoder -> Linear(latent) -> decoder, as `ae_jax.models.Autoencoder`."""

  def __init__(self, encoder: nn.Module, decoder: nn.Module):
    super().__init__()
    self.encoder = encoder
    self.decoder = decoder

  def encode(self, x):
    return self.encoder(x)

  def decode(self, z):
    return self.decoder(z)

  def forward(self, x):
    return self.decoder(self.encoder(x))


def mlp_autoencoder() -> Autoencoder:
  """784-512-256-32 and its mirror; inputs (B, 784)."""
  latent = nn.Linear(architectures.MLP_WIDTHS[-1], architectures.LATENT_DIM)
  return Autoencoder(nn.Sequential(*_mlp_encoder(784), latent),
                     nn.Sequential(*_mlp_decoder(784)))


def conv_autoencoder(height: int, width: int, channels: int) -> Autoencoder:
  """Stride-2 3x3 convolutions (32, 64), Linear to the latent; Linear to the smallest
  map, transposed convolutions (64, 32) and a 3x3 conv back to `channels`. NCHW inputs."""
  c1, c2 = architectures.CONV_CHANNELS
  h, w = height // 4, width // 4
  encoder = nn.Sequential(
      nn.Conv2d(channels, c1, 3, stride=2, padding=1), nn.ReLU(),
      nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(),
      nn.Flatten(), nn.Linear(c2 * h * w, architectures.LATENT_DIM))
  decoder = nn.Sequential(
      nn.Linear(architectures.LATENT_DIM, c2 * h * w), nn.ReLU(), nn.Unflatten(1, (c2, h, w)),
      nn.ConvTranspose2d(c2, c2, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
      nn.ConvTranspose2d(c2, c1, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
      nn.Conv2d(c1, channels, 3, padding=1))
  return Autoencoder(encoder, decoder)


def autoencoder(network: str) -> Autoencoder:
  if network == "mlp":
    return mlp_autoencoder()
  h, w, c = architectures.INPUT_SHAPES[network]
  return conv_autoencoder(h, w, c)


def torch_input(network: str, x: np.ndarray) -> torch.Tensor:
  """A (B, *shape) NHWC/flat numpy batch as the tensor the torch twin takes (NCHW)."""
  t = torch.from_numpy(np.ascontiguousarray(x))
  return t if network == "mlp" else t.permute(0, 3, 1, 2).contiguous()


class MLPVAE(nn.Module):
  """Bernoulli VAE with the MLP encoder/decoder, as `ae_jax.models.VAE` (decoder logits)."""

  def __init__(self):
    super().__init__()
    self.encoder = nn.Sequential(*_mlp_encoder(784))
    self.to_mean = nn.Linear(architectures.MLP_WIDTHS[-1], architectures.LATENT_DIM)
    self.to_logvar = nn.Linear(architectures.MLP_WIDTHS[-1], architectures.LATENT_DIM)
    self.decoder = nn.Sequential(*_mlp_decoder(784))

  def forward(self, x, eps):
    h = self.encoder(x)
    mean, logvar = self.to_mean(h), self.to_logvar(h)
    z = mean + torch.exp(0.5 * logvar) * eps
    return self.decoder(z), mean, logvar


def vae_terms(model: MLPVAE, x: torch.Tensor, eps: torch.Tensor):
  """Per-example (negative reconstruction log-likelihood, KL), both (B,)."""
  logits, mean, logvar = model(x, eps)
  rec = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
  kl = 0.5 * torch.sum(torch.exp(logvar) + mean ** 2 - 1.0 - logvar, dim=-1)
  return rec, kl


def _linears(module: nn.Module) -> list[nn.Linear]:
  return [m for m in module.modules() if isinstance(m, nn.Linear)]


@torch.no_grad()
def copy_mlp_params(flax_params: dict, encoder: nn.Module, heads: list[nn.Linear],
                    head_names: list[str], decoder: nn.Module) -> None:
  """Copy a Flax MLP model's Dense kernels (in, out) into torch Linear weights (out, in)."""
  p = flax_params["params"]
  pairs = []
  enc = p["encoder"]
  pairs += list(zip(_linears(encoder), [enc[f"Dense_{i}"] for i in range(len(enc))]))
  pairs += list(zip(heads, [p[name] for name in head_names]))
  dec = p["decoder"]
  pairs += list(zip(_linears(decoder), [dec[f"Dense_{i}"] for i in range(len(dec))]))
  for linear, dense in pairs:
    linear.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"]).T.copy()))
    linear.bias.copy_(torch.from_numpy(np.asarray(dense["bias"]).copy()))


def mlp_vae_from_flax(flax_params: dict) -> MLPVAE:
  model = MLPVAE()
  copy_mlp_params(flax_params, model.encoder, [model.to_mean, model.to_logvar],
                  ["to_mean", "to_logvar"], model.decoder)
  return model


def mlp_autoencoder_from_flax(flax_params: dict) -> Autoencoder:
  model = mlp_autoencoder()
  enc_linears = _linears(model.encoder)
  copy_mlp_params(flax_params, nn.Sequential(*enc_linears[:-1]), [enc_linears[-1]],
                  ["to_latent"], model.decoder)
  return model


def parameter_count(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


class TopKSAE(nn.Module):
  """A TopK sparse autoencoder (a linear dictionary), the PyTorch twin of the `sparse`
  family with `model.dictionary=True, model.sparsity='topk'`:

    z = topk_k(relu((x - b_pre) @ W_enc + b_enc)),  x_hat = z @ W_dec + b_pre,

  W_enc (D, L), W_dec (L, D) with unit-norm rows (re-projected by `project_decoder`
  after every optimizer step), the encoder initialised as the decoder's transpose.
  """

  def __init__(self, features: int, latents: int, k: int, seed: int = 0):
    super().__init__()
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(latents, features, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    self.k = k
    self.w_dec = nn.Parameter(w_dec)
    self.w_enc = nn.Parameter(w_dec.T.clone())
    self.b_enc = nn.Parameter(torch.zeros(latents))
    self.b_pre = nn.Parameter(torch.zeros(features))

  def encode(self, x):
    pre = torch.relu((x - self.b_pre) @ self.w_enc + self.b_enc)
    values, idx = torch.topk(pre, self.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, idx, values)

  def forward(self, x):
    return self.encode(x) @ self.w_dec + self.b_pre

  @torch.no_grad()
  def project_decoder(self):
    self.w_dec.div_(self.w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


def topk_sae_train_step(model: TopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
  """One Adam step on the per-example MSE (mean over features and examples), then the
  decoder rows are projected back to unit norm. Returns the loss."""
  opt.zero_grad(set_to_none=True)
  loss = torch.nn.functional.mse_loss(model(x), x)
  loss.backward()
  opt.step()
  model.project_decoder()
  return loss.detach()
