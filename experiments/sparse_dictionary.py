"""Sparse autoencoders as dictionaries: L1, L1 weighted by decoder norms, TopK, TopK+AuxK,
BatchTopK and JumpReLU compared at the same L0 on two kinds of data.

Data (offline): MNIST pixels (`mnist_t10k`: its fixed 8,000 / 2,000 split; the last
1,000 of the 8,000 are the validation split) with scikit-learn's 8x8 digits as the
fallback when the shared data is absent; and the post-ReLU hidden activations of a small
MLP classifier trained in this script on the same training split (the setting of SAE
research, made offline), scaled so that the mean squared norm of a training vector is
its dimension.

  python -m experiments.sparse_dictionary            # the CPU-sized run (RESULTS_sparse.md)
  python -m experiments.sparse_dictionary --smoke    # seconds, for CI
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import configs, fit
from ae_jax import data as data_lib
from ae_jax.errors import ConfigError
from experiments import _io

NAME = "sparse_dictionary"
VAL_SIZE = 1000


@dataclasses.dataclass
class Splits:
  """Train / validation / test vectors (N, D) float32 with labels, and where they came from."""
  name: str
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  y_train: np.ndarray
  y_val: np.ndarray
  y_test: np.ndarray
  note: str = ""

  @property
  def dim(self) -> int:
    return self.train.shape[1]

  def subset(self, n_train: int, n_eval: int) -> "Splits":
    return dataclasses.replace(
        self, train=self.train[:n_train], y_train=self.y_train[:n_train], val=self.val[:n_eval],
        y_val=self.y_val[:n_eval], test=self.test[:n_eval], y_test=self.y_test[:n_eval])


def _flat(data) -> tuple[np.ndarray, np.ndarray]:
  return data.x.reshape(len(data), -1).astype(np.float32), np.asarray(data.y, np.int32)


def load_pixels(source: str = "mnist_t10k", val_size: int = VAL_SIZE) -> Splits:
  """Pixel vectors in [0, 1]: mnist_t10k's train split minus its last `val_size` examples,
  those as validation, and its test split. With source 'digits' (or when the shared data
  is absent) the 1,797 8x8 digits, split 1,200 / 297 / 300 with RandomState(0)."""
  if source == "mnist_t10k" and data_lib.data_dir() is None:
    source = "digits"
  if source == "mnist_t10k":
    train, test = _io.load_splits("mnist_t10k")
    x, y = _flat(train)
    x_test, y_test = _flat(test)
    return Splits("mnist_t10k", x[:-val_size], x[-val_size:], x_test, y[:-val_size],
                  y[-val_size:], y_test, "MNIST t10k pixels, 7,000 / 1,000 / 2,000")
  if source != "digits":
    raise ConfigError(f"--data must be mnist_t10k or digits, got {source!r}")
  x, y = _flat(data_lib.load("digits"))
  order = np.random.RandomState(0).permutation(len(x))
  tr, va, te = order[:1200], order[1200:1497], order[1497:]
  return Splits("digits", x[tr], x[va], x[te], y[tr], y[va], y[te],
                "sklearn 8x8 digits (fallback: shared MNIST absent), 1,200 / 297 / 300")


def _mlp_init(key, sizes):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)})
  return params


def _mlp_hidden(params, x):
  """Post-ReLU activations of every hidden layer, a list of (B, width)."""
  hidden, h = [], x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
    hidden.append(h)
  return hidden


def _mlp_logits(params, x):
  h = _mlp_hidden(params, x)[-1] if len(params) > 1 else x
  return h @ params[-1]["w"] + params[-1]["b"]


def train_classifier(x, y, widths=(256, 128), epochs: int = 8, batch_size: int = 128,
                     learning_rate: float = 1e-3, seed: int = 0):
  """An MLP classifier x (N, D) -> 10 classes with ReLU hidden layers of `widths`,
  trained with Adam on softmax cross-entropy. Returns its parameters (a list of layers)."""
  num_classes = int(y.max()) + 1
  params = _mlp_init(jax.random.key(seed), [x.shape[1], *widths, num_classes])
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(_mlp_logits(p, xb), yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(seed)
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      params, opt_state, _ = step(params, opt_state, x[idx], y[idx])
  return params


def classifier_accuracy(params, x, y) -> float:
  return float(np.mean(np.asarray(jnp.argmax(_mlp_logits(params, x), -1)) == y))


def load_activations(pixels: Splits, widths=(256, 128), layer: int = -1, epochs: int = 8,
                     seed: int = 0) -> tuple[Splits, dict]:
  """Post-ReLU activations of hidden layer `layer` of an MLP classifier trained on
  `pixels.train`, for every split, scaled by one factor (fitted on the training split) so
  that a training vector's mean squared norm equals its dimension. Returns the splits
  and the classifier's facts (widths, epochs, validation and test accuracy, scale)."""
  t0 = time.time()
  params = train_classifier(pixels.train, pixels.y_train, widths, epochs=epochs, seed=seed)
  acts = {split: np.asarray(_mlp_hidden(params, getattr(pixels, split))[layer], np.float32)
          for split in ("train", "val", "test")}
  scale = float(np.sqrt(acts["train"].shape[1] / np.mean(np.sum(acts["train"] ** 2, -1))))
  facts = {"widths": list(widths), "layer": layer, "epochs": epochs,
           "val_accuracy": classifier_accuracy(params, pixels.val, pixels.y_val),
           "test_accuracy": classifier_accuracy(params, pixels.test, pixels.y_test),
           "scale": scale, "train_seconds": round(time.time() - t0, 1),
           "alive_units": int(np.sum(acts["train"].max(0) > 0))}
  width = acts["train"].shape[1]
  splits = Splits(f"mlp_acts_{pixels.name}", acts["train"] * scale, acts["val"] * scale,
                  acts["test"] * scale, pixels.y_train, pixels.y_val, pixels.y_test,
                  f"post-ReLU activations ({width} units) of hidden layer {layer} of an MLP "
                  f"{pixels.dim}-{'-'.join(map(str, widths))}-10 classifier trained {epochs} "
                  f"epochs on the {pixels.name} training split (test accuracy "
                  f"{facts['test_accuracy']:.3f}), scaled by {scale:.3g}")
  return splits, facts


# ---- the sparse autoencoders -----------------------------------------------------------

# Each method: the sparse family's settings, and the coefficient that sets its L0 (None:
# L0 is set by model.k). "L1" is today's sparse family (Dense encoder and decoder, L1 on
# the ReLU codes, no decoder constraint); the others are linear dictionaries.
METHODS = {
    "L1": ({"model.dictionary": False, "model.widths": (), "model.sparsity": "l1"},
           "objective.l1_weight"),
    "L1 + decoder norm": ({"model.sparsity": "l1", "objective.l1_decoder_norm": True,
                           "model.pre_bias_init": "geometric_median"}, "objective.l1_weight"),
    "TopK": ({"model.sparsity": "topk", "model.unit_decoder": True,
              "model.pre_bias_init": "geometric_median"}, None),
    "TopK + AuxK": ({"model.sparsity": "topk", "model.unit_decoder": True,
                     "model.pre_bias_init": "geometric_median", "objective.auxk": -1}, None),
    "BatchTopK + AuxK": ({"model.sparsity": "batch_topk", "model.unit_decoder": True,
                          "model.pre_bias_init": "geometric_median", "objective.auxk": -1}, None),
    "JumpReLU": ({"model.sparsity": "jumprelu", "model.unit_decoder": True,
                  "model.pre_bias_init": "geometric_median"}, "objective.l0_weight"),
}


def _set(cfg, dotted: str, value):
  section, field = dotted.split(".")
  cfg[section][field] = value


def sae_config(method: str, dim: int, *, expansion: int, k: int, coef: float | None,
               epochs: int, batch_size: int, learning_rate: float, seed: int, eval_every: int):
  """The `sparse` family config of one method on D=`dim` inputs with expansion*D latents.
  `objective.auxk: -1` in METHODS means k_aux = D // 2 (OpenAI's choice, d_model / 2)."""
  cfg = configs.get_preset("default")
  cfg = configs.set_offline_training(cfg, learning_rate=learning_rate, batch_size=batch_size,
                                     epochs=epochs)
  cfg.seed = seed
  cfg.model.family = "sparse"
  cfg.model.dictionary = True
  cfg.model.latent_dim = expansion * dim
  cfg.model.k = k
  cfg.model.recon_loss = "mse"
  cfg.train.eval_every = eval_every
  settings, coef_field = METHODS[method]
  for dotted, value in settings.items():
    _set(cfg, dotted, value)
  if cfg.objective.auxk == -1:
    cfg.objective.auxk = max(1, min(dim // 2, cfg.model.latent_dim))
  if coef_field is not None:
    _set(cfg, coef_field, float(coef))
  return cfg


def _array(x, y, name):
  return data_lib.sources.make_array_data(x, y, name, "vector")


def firing_frequencies(trained, x) -> np.ndarray:
  """Share of the examples x (N, D) on which each latent is nonzero, (L,)."""
  return np.mean(trained.encode(x) != 0, axis=0)


def train_sae(splits: Splits, method: str, coef, args, seed: int):
  """Train one SAE on splits.train (validation split evaluated during training); returns
  the trained model, the validation metrics and the wall seconds of `fit`."""
  cfg = sae_config(method, splits.dim, expansion=args.expansion, k=args.k[splits.name],
                   coef=coef, epochs=args.epochs[splits.name], batch_size=args.batch_size,
                   learning_rate=args.lr, seed=seed,
                   eval_every=max(1, args.epochs[splits.name] * len(splits.train)
                                  // args.batch_size // 4))
  t0 = time.time()
  trained = fit.fit(cfg, train_data=_array(splits.train, None, splits.name),
                    eval_data=_array(splits.val, None, splits.name + ":val"), progress=False)
  seconds = time.time() - t0
  return trained, trained.evaluate(splits.val), seconds


def calibrate(splits: Splits, method: str, target: float, guess: float, args, seed: int,
              runs: int, tolerance: float) -> list[dict]:
  """Find the coefficient giving validation L0 = target: secant steps on log L0 against
  log coefficient from `guess` (the first step assumes L0 ~ 1 / coefficient), stopping
  once |L0 - target| <= tolerance * target or after `runs` trainings. Returns every run
  ({coef, val metrics, seconds, trained}) in order."""
  tried, coef = [], guess
  for _ in range(runs):
    trained, val, seconds = train_sae(splits, method, coef, args, seed)
    tried.append({"coef": coef, "val": val, "seconds": seconds, "trained": trained})
    print(f"  {splits.name} {method} coef={coef:.4g} val L0={val['l0']:.2f} "
          f"FVU={val['fvu']:.4f} ({seconds:.0f} s)", flush=True)
    if abs(val["l0"] - target) <= tolerance * target:
      break
    coef = _next_coefficient(tried, target)
  return tried


def _next_coefficient(tried: list[dict], target: float) -> float:
  pts = [(np.log(t["coef"]), np.log(max(t["val"]["l0"], 1e-3))) for t in tried]
  if len(pts) == 1:
    slope = -1.0
  else:
    (c0, l0), (c1, l1) = sorted(pts, key=lambda p: abs(p[1] - np.log(target)))[:2]
    slope = (l1 - l0) / (c1 - c0) if c1 != c0 else -1.0
    if not np.isfinite(slope) or slope > -0.05:
      slope = -1.0
  c, l = min(pts, key=lambda p: abs(p[1] - np.log(target)))
  step = np.clip((np.log(target) - l) / slope, -np.log(30.0), np.log(30.0))
  return float(np.exp(c + step))


def speed_rows(dim: int, latents: int, k: int, batch_size: int, seed: int, repeats: int,
               budget_s: float) -> list[dict]:
  """Examples per second of one TopK SAE train step (Adam, MSE, unit-norm decoder rows
  re-projected after the step): ae_jax's `train_step` under jit against the PyTorch twin
  `benchmarks.torch_models.TopKSAE`, timed in turns in this process on the same batch."""
  import functools  # pylint: disable=g-import-not-at-top
  from ae_jax import parallel, train  # pylint: disable=g-import-not-at-top
  from ae_jax.families import build_model, get_family  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"speed comparison skipped: PyTorch is not importable ({e})")
    return []
  cfg = sae_config("TopK", dim, expansion=latents // dim, k=k, coef=None, epochs=1,
                   batch_size=batch_size, learning_rate=1e-3, seed=seed, eval_every=10 ** 9)
  cfg.model.pre_bias_init = "zeros"
  model = build_model(cfg, (dim,))
  family = get_family("sparse")
  state = train.create_train_state(cfg, model, (dim,), jax.random.key(seed), 1000)
  step = parallel.compile_step(functools.partial(train.train_step, model=model, family=family,
                                                 config=cfg), "jit")
  x = np.random.RandomState(seed).rand(batch_size, dim).astype(np.float32)
  holder = {"state": state, "batch": {"x": jax.device_put(x)}, "rng": jax.random.key(1)}

  def jax_call():
    holder["state"], metrics = step(holder["state"], holder["batch"], holder["rng"])
    jax.block_until_ready((holder["state"], metrics))

  torch.manual_seed(seed)
  sae = torch_models.TopKSAE(dim, latents, k, seed=seed)
  opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
  xt = torch.from_numpy(x)
  torch_call = lambda: torch_models.topk_sae_train_step(sae, opt, xt)
  timings = common.time_interleaved({"jax": jax_call, "torch": torch_call}, repeats=repeats,
                                    budget_s=budget_s)
  rows = []
  for name, timing in timings.items():
    s = timing.summary()
    rows.append({"implementation": "ae_jax (jit)" if name == "jax" else "PyTorch eager",
                 "inputs": dim, "latents": latents, "k": k, "batch": batch_size,
                 "median step ms": 1e3 * s["median_s"],
                 "examples/s": batch_size / s["median_s"], "repeats": s["repeats"],
                 "torch threads": torch.get_num_threads()})
  rows[0]["jax / torch"] = rows[0]["examples/s"] / rows[1]["examples/s"]
  return rows
