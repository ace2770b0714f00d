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
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import configs, fit
from ae_jax import data as data_lib
from ae_jax.errors import ConfigError
from ae_jax import results as _io

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
  key: str = "pixels"             # pixels | acts: which of the experiment's two kinds

  @property
  def dim(self) -> int:
    return self.train.shape[1]

  def subset(self, n_train: int, n_eval: int) -> "Splits":
    return dataclasses.replace(
        self, train=self.train[:n_train], y_train=self.y_train[:n_train], val=self.val[:n_eval],
        y_val=self.y_val[:n_eval], test=self.test[:n_eval], y_test=self.y_test[:n_eval])


def _flat(data) -> tuple[np.ndarray, np.ndarray]:
  return data.x.reshape(len(data), -1).astype(np.float32), np.asarray(data.y, np.int32)


def pool_pixels(splits: Splits, side: int, pool: int) -> Splits:
  """Average pooling of square images side x side stored flat (N, side^2) over pool x pool
  blocks, (N, (side / pool)^2); pool 1 returns splits unchanged."""
  if pool == 1:
    return splits
  if side % pool:
    raise ConfigError(f"--pixel-pool {pool} must divide the image side {side}")
  n = side // pool

  def down(x):
    return x.reshape(len(x), n, pool, n, pool).mean((2, 4)).reshape(len(x), n * n)

  return dataclasses.replace(
      splits, name=f"{splits.name}_{n}x{n}", train=down(splits.train), val=down(splits.val),
      test=down(splits.test), note=f"{splits.note}, {pool}x{pool} average-pooled to {n}x{n}")


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
                  f"{facts['test_accuracy']:.3f}), scaled by {scale:.3g}", key="acts")
  return splits, facts


# ---- the sparse autoencoders -----------------------------------------------------------

# AuxK's weight: 1, not the TopK paper's 1/32, with a latent dead after one pass over the
# training data without firing (`model.dead_window: -1`), under a constant learning rate
# (the reference code's; `--schedule`). Chosen by the AuxK study on the activations'
# validation split (RESULTS_sparse.md): the lowest validation FVU (0.0484) among the
# settings with at most 1 % of latents never firing on the training split (0.2 %); the
# paper's 1/32 with the same window and schedule left 2.2 %.
AUXK_WEIGHT = 1.0

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
                     "model.pre_bias_init": "geometric_median", "objective.auxk": -1,
                     "objective.auxk_weight": AUXK_WEIGHT, "model.dead_window": -1}, None),
    "BatchTopK + AuxK": ({"model.sparsity": "batch_topk", "model.unit_decoder": True,
                          "model.pre_bias_init": "geometric_median", "objective.auxk": -1,
                          "objective.auxk_weight": AUXK_WEIGHT, "model.dead_window": -1},
                         None),
    # Session 5's JumpReLU study (RESULTS_sparse.md, validation): the paper's start (every
    # threshold 0.001, so the dictionary starts as a ReLU SAE and the L0 penalty raises the
    # thresholds), thresholds learned 30x faster, the L0 coefficient warmed up over 3
    # epochs, AuxK as in TopK + AuxK: 2.2 % of latents never fired at L0 coefficient 1e-3
    # (more at larger ones: ~60 % at 3e-3), against 86 % with the
    # session-4 start (thresholds from the data for an initial L0 of k).
    "JumpReLU": ({"model.sparsity": "jumprelu", "model.unit_decoder": True,
                  "model.pre_bias_init": "geometric_median", "model.jump_init_l0": 0.0,
                  "model.jump_threshold_init": 1e-3, "model.jump_threshold_lr_scale": 30.0,
                  "objective.l0_warmup_steps": -3, "objective.auxk": -1,
                  "objective.auxk_weight": AUXK_WEIGHT, "model.dead_window": -1},
                 "objective.l0_weight"),
}


# JumpReLU's straight-through kernel: about a tenth as wide as the thresholds the data
# needs (~0.5 for the pooled pixels, ~1.5 for the scaled activations; session 4).
KIND_SETTINGS = {("JumpReLU", "pixels"): {"model.jump_bandwidth": 0.05},
                 ("JumpReLU", "acts"): {"model.jump_bandwidth": 0.15}}


def _set(cfg, dotted: str, value):
  section, field = dotted.split(".")
  cfg[section][field] = value


def sae_config(method: str, dim: int, *, expansion: int, k: int, coef: float | None,
               epochs: int, batch_size: int, learning_rate: float, seed: int, eval_every: int,
               kind: str = "pixels", overrides: dict | None = None, n_train: int = 0,
               schedule: str = "constant"):
  """The `sparse` family config of one method on D=`dim` inputs with expansion*D latents,
  then `overrides` ({"objective.auxk_weight": 0.5, ...}; those of the AuxK study).
  Relative settings: `objective.auxk: -1` means k_aux = D // 2 (OpenAI's choice,
  d_model / 2); `model.dead_window: -m` m passes over the n_train training examples;
  `model.jump_init_l0: -1` the target L0 k; `objective.l0_warmup_steps: -m` the steps of m
  epochs over the n_train examples. coef None keeps the coefficient of METHODS /
  overrides (the family's default otherwise)."""
  cfg = configs.get_preset("default")
  cfg = configs.set_offline_training(cfg, learning_rate=learning_rate, batch_size=batch_size,
                                     epochs=epochs)
  cfg.optim.schedule = schedule
  cfg.seed = seed
  cfg.model.family = "sparse"
  cfg.model.dictionary = True
  cfg.model.latent_dim = expansion * dim
  cfg.model.k = k
  cfg.model.recon_loss = "mse"
  cfg.train.eval_every = eval_every
  settings, coef_field = METHODS[method]
  for dotted, value in {**settings, **KIND_SETTINGS.get((method, kind), {}),
                        **(overrides or {})}.items():
    _set(cfg, dotted, value)
  if cfg.objective.auxk == -1:
    cfg.objective.auxk = max(1, min(dim // 2, cfg.model.latent_dim))
  if cfg.model.dead_window < 0:
    if n_train <= 0:
      raise ConfigError("model.dead_window -m (m epochs) needs the training set size n_train")
    cfg.model.dead_window = -cfg.model.dead_window * n_train
  if cfg.objective.l0_warmup_steps < 0:
    if n_train <= 0:
      raise ConfigError("objective.l0_warmup_steps -m (m epochs) needs the training set size "
                        "n_train")
    cfg.objective.l0_warmup_steps = -cfg.objective.l0_warmup_steps * n_train // batch_size
  if cfg.model.jump_init_l0 < 0:
    cfg.model.jump_init_l0 = float(k)
  if coef_field is not None and coef is not None:
    _set(cfg, coef_field, float(coef))
  return cfg


def _array(x, y, name):
  return data_lib.sources.make_array_data(x, y, name, "vector")


def firing_frequencies(trained, x, chunk: int = 1000) -> np.ndarray:
  """Share of the examples x (N, D) on which each latent is nonzero, (L,)."""
  counts = sum(np.sum(trained.encode(x[i:i + chunk]) != 0, axis=0)
               for i in range(0, len(x), chunk))
  return counts / len(x)


def train_sae(splits: Splits, method: str, coef, args, seed: int, overrides: dict | None = None):
  """Train one SAE on splits.train (validation split evaluated during training); returns
  the trained model, the validation metrics and the wall seconds of `fit`."""
  epochs = (overrides or {}).get("train.num_epochs", args.epochs[splits.key])
  cfg = sae_config(method, splits.dim, expansion=args.expansion, k=args.k[splits.key],
                   coef=coef, epochs=epochs, batch_size=args.batch_size,
                   learning_rate=args.lr, seed=seed, schedule=args.schedule,
                   eval_every=max(1, epochs * len(splits.train) // args.batch_size // 4),
                   kind=splits.key, overrides=overrides, n_train=len(splits.train))
  t0 = time.time()
  trained = fit.fit(cfg, train_data=_array(splits.train, None, splits.name),
                    eval_data=_array(splits.val, None, splits.name + ":val"), progress=False)
  seconds = time.time() - t0
  return trained, trained.evaluate(splits.val), seconds


def _measure(splits: Splits, method: str, coef: float, args, seed: int) -> dict:
  """One calibration training: {val, seconds, trained} at coefficient coef."""
  trained, val, seconds = train_sae(splits, method, coef, args, seed)
  print(f"  {splits.name} {method} coef={coef:.4g} val L0={val['l0']:.2f} "
        f"FVU={val['fvu']:.4f} ({seconds:.0f} s)", flush=True)
  return {"val": val, "seconds": seconds, "trained": trained}


def calibrate(measure, target: float, guess: float, runs: int, tolerance: float,
              first_slope: float = -1.0) -> list[dict]:
  """Find the coefficient whose validation L0 is `target`, for any penalty method.
  `measure(coef)` trains at coef and returns a dict with `val` ({"l0", ...}). From `guess`,
  `next_coefficient` extrapolates in log-log space until two runs bracket the target, then
  interpolates between the bracketing runs; it stops once |L0 - target| <= tolerance *
  target or after `runs` trainings. Returns every run ({coef, **measure(coef)}) in order."""
  if runs < 1:
    raise ConfigError(f"--calibration-runs must be >= 1, got {runs}")
  tried, coef = [], guess
  for _ in range(runs):
    tried.append({"coef": coef, **measure(coef)})
    if abs(tried[-1]["val"]["l0"] - target) <= tolerance * target:
      break
    coef = next_coefficient(tried, target, first_slope)
  return tried


BRACKET_EDGE = 0.02   # interpolation stays this share of the bracket's width inside it
MAX_STEP = 30.0       # extrapolation moves the coefficient at most this factor


def next_coefficient(tried: list[dict], target: float, first_slope: float = -1.0) -> float:
  """The next coefficient to try for validation L0 = target from the runs so far
  ([{coef, val: {l0}}]), L0 falling with the coefficient. Bracket, then interpolate:
  once some run is above the target and some below, the tightest bracket (the largest
  coefficient above, the smallest below) is interpolated linearly in log L0 against log
  coefficient, kept BRACKET_EDGE of its width inside it (its geometric middle if the runs
  are out of order). Before that, a step from the run nearest the target along the
  log-log slope through the two nearest runs (one run: `first_slope`, -1 meaning
  L0 ~ 1 / coefficient; a slope above -0.05 falls back to -1), at most MAX_STEP times."""
  pts = [(np.log(t["coef"]), np.log(max(t["val"]["l0"], 1e-3))) for t in tried]
  goal = np.log(target)
  above = [p for p in pts if p[1] > goal]
  below = [p for p in pts if p[1] < goal]
  if above and below:
    (c0, l0), (c1, l1) = max(above), min(below)
    if c0 >= c1:
      return float(np.exp((c0 + c1) / 2))
    frac = np.clip((goal - l0) / (l1 - l0), BRACKET_EDGE, 1 - BRACKET_EDGE)
    return float(np.exp(c0 + frac * (c1 - c0)))
  if len(pts) == 1:
    slope = first_slope
  else:
    (c0, l0), (c1, l1) = sorted(pts, key=lambda p: abs(p[1] - goal))[:2]
    slope = (l1 - l0) / (c1 - c0) if c1 != c0 else -1.0
    if not np.isfinite(slope) or slope > -0.05:
      slope = -1.0
  c, l = min(pts, key=lambda p: abs(p[1] - goal))
  step = np.clip((goal - l) / slope, -np.log(MAX_STEP), np.log(MAX_STEP))
  return float(np.exp(c + step))


def speed_rows(dim: int, latents: int, k: int, batch_size: int, seed: int, repeats: int,
               budget_s: float) -> list[dict]:
  """Examples per second of one TopK SAE train step (Adam, MSE, unit-norm decoder rows
  re-projected after the step): ae_jax's `train_step` under jit against the PyTorch twin
  `benchmarks.torch_models.TopKSAE`, timed in turns in this process on the same batch."""
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


# ---- the AuxK study (validation split only) ---------------------------------------------

# TopK with and without AuxK, and the AuxK settings the issue leaves open (dead window,
# k_aux, weight, learning rate, epochs). Each: (method, overrides of sae_config).
OPENAI = {"objective.auxk_weight": 1 / 32}   # the TopK paper's AuxK weight
# JumpReLU candidates (session 5): AuxK on its dead latents with TopK + AuxK's settings;
# thresholds learned 30x faster; the L0 coefficient warmed up from 0 over the first 10 % of
# training (3 of 30 epochs); the paper's start (every threshold 0.001, no data thresholds).
# The session-4 JumpReLU (thresholds from the data for an initial L0 of k, no AuxK, no
# warm-up, thresholds at the optimizer's rate): every study entry starts from it, so the
# entries mean at any commit what they meant when the study ran (METHODS' JumpReLU is now
# the study's pick).
JUMP_SESSION4 = {"model.jump_init_l0": -1.0, "model.jump_threshold_lr_scale": 1.0,
                 "objective.l0_warmup_steps": 0, "objective.auxk": 0,
                 "objective.auxk_weight": 1 / 32, "model.dead_window": 4096}
JUMP_AUXK = {"objective.auxk": -1, "objective.auxk_weight": AUXK_WEIGHT, "model.dead_window": -1}
JUMP_FAST = {"model.jump_threshold_lr_scale": 30.0}
JUMP_FASTER = {"model.jump_threshold_lr_scale": 100.0}
JUMP_WARM = {"objective.l0_warmup_steps": -3}
JUMP_PAPER_INIT = {"model.jump_init_l0": 0.0, "model.jump_threshold_init": 1e-3}
AUXK_STUDY = {
    "TopK": ("TopK", {}),
    "AuxK": ("TopK + AuxK", OPENAI),
    "AuxK window 1024": ("TopK + AuxK", {**OPENAI, "model.dead_window": 1024}),
    "AuxK weight 1": ("TopK + AuxK", {"objective.auxk_weight": 1.0}),
    "AuxK k_aux 4D": ("TopK + AuxK", {**OPENAI, "objective.auxk": -4}),
    "AuxK lr 3e-4": ("TopK + AuxK", {**OPENAI, "optim.learning_rate": 3e-4}),
    "AuxK 3x epochs": ("TopK + AuxK", {**OPENAI, "train.num_epochs": -3}),
    "TopK 3x epochs": ("TopK", {"train.num_epochs": -3}),
    "AuxK weight 1 window 16384": ("TopK + AuxK", {"objective.auxk_weight": 1.0,
                                                   "model.dead_window": 16384}),
    "AuxK weight 1 3x epochs": ("TopK + AuxK", {"objective.auxk_weight": 1.0,
                                                "train.num_epochs": -3}),
    # Session 4: a latent is dead after a pass over the training data without firing (the
    # window the goal measures), and the reference code's constant learning rate.
    "AuxK weight 1 window epoch": ("TopK + AuxK", {"objective.auxk_weight": 1.0,
                                                   "model.dead_window": -1}),
    "AuxK weight 1 window 2 epochs": ("TopK + AuxK", {"objective.auxk_weight": 1.0,
                                                      "model.dead_window": -2}),
    "AuxK weight 1 window epoch constant lr": ("TopK + AuxK", {
        "objective.auxk_weight": 1.0, "model.dead_window": -1, "optim.schedule": "constant"}),
    "AuxK window epoch constant lr": ("TopK + AuxK", {
        **OPENAI, "model.dead_window": -1, "optim.schedule": "constant"}),
    "TopK constant lr": ("TopK", {"optim.schedule": "constant"}),
    "JumpReLU l0 1e-3": ("JumpReLU", {**JUMP_SESSION4, "objective.l0_weight": 1e-3}),
    "JumpReLU l0 1e-2": ("JumpReLU", {**JUMP_SESSION4, "objective.l0_weight": 1e-2}),
    # First calibration points of the penalties on the pooled pixels (validation L0).
    "L1 3e-4": ("L1", {"objective.l1_weight": 3e-4}),
    "L1 + decoder norm 1e-3": ("L1 + decoder norm", {"objective.l1_weight": 1e-3}),
    # Session 5: why JumpReLU's latents die, and what brings it to its target L0.
    **{name: ("JumpReLU", {**JUMP_SESSION4, **{k: v for part in parts for k, v in part.items()},
                           "objective.l0_weight": coef})
       for name, parts, coef in (
           ("JumpReLU + AuxK", (JUMP_AUXK,), 1e-3),
           ("JumpReLU threshold lr x30", (JUMP_FAST,), 1e-3),
           ("JumpReLU warm-up", (JUMP_WARM,), 1e-3),
           ("JumpReLU + AuxK threshold lr x30", (JUMP_AUXK, JUMP_FAST), 1e-3),
           ("JumpReLU + AuxK threshold lr x30 warm-up", (JUMP_AUXK, JUMP_FAST, JUMP_WARM), 1e-3),
           ("JumpReLU paper init + AuxK threshold lr x30 warm-up",
            (JUMP_AUXK, JUMP_FAST, JUMP_WARM, JUMP_PAPER_INIT), 1e-3),
           # Follow-up: the paper's start, with and without AuxK, thresholds 30x or 100x faster.
           ("JumpReLU paper init threshold lr x30 warm-up l0 3e-3",
            (JUMP_FAST, JUMP_WARM, JUMP_PAPER_INIT), 3e-3),
           ("JumpReLU paper init + AuxK threshold lr x30 warm-up l0 3e-3",
            (JUMP_AUXK, JUMP_FAST, JUMP_WARM, JUMP_PAPER_INIT), 3e-3),
           ("JumpReLU paper init threshold lr x100 warm-up l0 3e-3",
            (JUMP_FASTER, JUMP_WARM, JUMP_PAPER_INIT), 3e-3),
           ("JumpReLU paper init + AuxK threshold lr x100 warm-up l0 3e-3",
            (JUMP_AUXK, JUMP_FASTER, JUMP_WARM, JUMP_PAPER_INIT), 3e-3),
           ("JumpReLU + AuxK l0 1e-2", (JUMP_AUXK,), 1e-2),
           ("JumpReLU threshold lr x30 l0 1e-2", (JUMP_FAST,), 1e-2),
           ("JumpReLU + AuxK threshold lr x30 l0 1e-2", (JUMP_AUXK, JUMP_FAST), 1e-2))},
}


def _study_overrides(overrides: dict, splits: Splits, args) -> dict:
  """Resolve the study's relative settings: auxk -m -> m * D latents (at most L), epochs -m
  -> m times the kind's epochs."""
  out = dict(overrides)
  if out.get("objective.auxk", 0) < -1:
    out["objective.auxk"] = min(-out["objective.auxk"] * splits.dim, args.expansion * splits.dim)
  if out.get("train.num_epochs", 0) < 0:
    out["train.num_epochs"] = -out["train.num_epochs"] * args.epochs[splits.key]
  return out


def jump_diagnosis(trained, x, dead) -> dict:
  """Where a trained JumpReLU dictionary's dead latents (`dead` (L,) bool) sit: median
  threshold of the live and the dead latents, the dead latents' largest pre-activation on
  x (N, D) over their threshold (< 1: they cannot fire on x), and their encoder bias
  against the live latents' (it starts at 0). {} for other activations."""
  if trained.config.model.sparsity != "jumprelu" or not np.any(dead):
    return {}
  model, params = trained.model, trained.params
  pre_fn = jax.jit(lambda p, v: model.apply(p, v, method=model.pre_activations))
  xs = trained._prep(x)  # pylint: disable=protected-access
  top = np.max(np.concatenate([np.asarray(pre_fn(params, xs[i:i + 1000])).max(0, keepdims=True)
                               for i in range(0, len(xs), 1000)]), 0)
  theta = np.asarray(model.apply(params, method=model.threshold))
  b_enc = np.asarray(params["params"]["b_enc"])
  alive = ~dead
  med = lambda v: round(float(np.median(v)), 3) if len(v) else float("nan")
  return {"threshold (live, dead)": (med(theta[alive]), med(theta[dead])),
          "dead: max pre / threshold": med(top[dead] / theta[dead]),
          "b_enc (live, dead)": (med(b_enc[alive]), med(b_enc[dead]))}


def auxk_study(splits: Splits, args, names) -> list[dict]:
  """Train each AUXK_STUDY variant once (seed args.seed) and report its validation FVU and
  L0, the latents that never fire on the training split and on the validation split, and
  the training window's dead share and the normalised AuxK loss |e - e_hat|^2 / Var(e) at
  the logged steps (the trajectory)."""
  rows = []
  for name in names:
    method, overrides = AUXK_STUDY[name]
    overrides = {"train.log_every": 20, **_study_overrides(overrides, splits, args)}
    trained, val, seconds = train_sae(splits, method, None, args, args.seed, overrides)
    train_freq = firing_frequencies(trained, splits.train)
    val_freq = firing_frequencies(trained, splits.val)
    logs = [r for r in trained.history if r["split"] == "train"]
    window = [(int(r["step"]), round(float(r.get("dead_window_fraction", np.nan)), 3),
               round(float(r.get("auxk", np.nan)), 2)) for r in logs]
    evals = [(int(r["step"]), round(float(r["l0"]), 2), round(float(r["fvu"]), 4))
             for r in trained.history if r["split"] == "eval"]
    jump = jump_diagnosis(trained, splits.train, train_freq == 0)
    rows.append({"data": splits.key, "variant": name, "overrides": overrides, **jump,
                 "val L0": val["l0"], "val FVU": val["fvu"],
                 "dead (train split)": float(np.mean(train_freq == 0)),
                 "dead (val)": float(np.mean(val_freq == 0)),
                 "dense (val)": float(np.mean(val_freq > 0.1)),
                 "dead window (step, share, auxk)": window,
                 "val (step, L0, FVU)": evals, "train s": round(seconds, 1)})
    print(f"  study {splits.key} {name}: val FVU {val['fvu']:.4f} L0 {val['l0']:.2f} dead "
          f"train {rows[-1]['dead (train split)']:.3f} val {rows[-1]['dead (val)']:.3f} "
          f"window {window} val {evals} ({seconds:.0f} s)", flush=True)
  return rows


# ---- the run ---------------------------------------------------------------------------

# First coefficient tried by the calibration, per data kind (the search moves from here),
# and the log-log slope of L0 against the coefficient that its first step assumes (-1
# where not listed). Session 5: the L1 penalties start from the session-4 comparison's own
# validation calibration runs (RESULTS_sparse.md), interpolated in log-log to the target:
# pixels L1 0.00046 -> 77.2 and 0.002235 -> 19.1 (slope -0.88; 32 at ~1.3e-3), L1 +
# decoder norm 0.0029 -> 37.8 and 0.003268 -> 31.1 (slope -1.6; 32 at ~3.2e-3); acts
# L1 + decoder norm 0.01124 -> 17.43, 0.016 -> 11.24 (slope -1.24; 0.01205 -> 15.98).
# JumpReLU (session 5's setting): 1e-3 gave validation L0 22.8 on the activations in the
# study, so 1.4e-3 at slope -1; on the pixels no point is known (a guess, 5e-4).
GUESSES = {("L1", "pixels"): 1.3e-3, ("L1", "acts"): 4.2e-3,
           ("L1 + decoder norm", "pixels"): 3.2e-3, ("L1 + decoder norm", "acts"): 1.2e-2,
           ("JumpReLU", "pixels"): 5e-4, ("JumpReLU", "acts"): 1.4e-3}
FIRST_SLOPES = {("L1", "pixels"): -0.9, ("L1 + decoder norm", "pixels"): -1.6,
                ("L1 + decoder norm", "acts"): -1.2}
GOAL_DEAD, GOAL_L0_TOL = 0.01, 0.10


def _kv(text: str, cast) -> dict:
  """'pixels=32,acts=16' -> {'pixels': 32, 'acts': 16}."""
  out = {}
  for part in text.split(","):
    key, value = part.split("=")
    out[key.strip()] = cast(value)
  return out


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data", default="mnist_t10k", help="mnist_t10k, or digits (the fallback)")
  p.add_argument("--kinds", default="acts,pixels", help="which data: acts, pixels or both")
  p.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
  p.add_argument("--expansion", type=int, default=8, help="latents per input dimension")
  p.add_argument("--k", default="pixels=32,acts=16", help="target L0 (TopK's k) per kind")
  p.add_argument("--epochs", default="pixels=30,acts=30", help="SAE training epochs per kind")
  p.add_argument("--pixel-pool", type=int, default=2,
                 help="average-pool MNIST's 28x28 pixels over blocks this wide for the pixels "
                      "kind (2: 14x14 = 196 inputs, 1,568 latents at 8x); the activations "
                      "always come from a classifier on the full 28x28 images")
  p.add_argument("--batch-size", type=int, default=256)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--schedule", default="constant",
                 help="learning-rate schedule of every SAE: constant (the reference code's; "
                      "chosen by the AuxK study) or cosine (to 0; sessions 2-3)")
  p.add_argument("--calibration-runs", type=int, default=5,
                 help="trainings allowed to find each penalty's coefficient")
  p.add_argument("--tolerance", type=float, default=0.05,
                 help="calibration stops at validation |L0 - k| <= tolerance * k")
  p.add_argument("--seeds", type=int, default=3,
                 help="seeds that retrain L1 + decoder norm at the chosen coefficient")
  p.add_argument("--classifier-epochs", type=int, default=8)
  p.add_argument("--speed-repeats", type=int, default=15)
  p.add_argument("--no-speed", action="store_true", help="skip the PyTorch speed comparison")
  p.add_argument("--study", default="",
                 help="run only the AuxK study: comma list of " + ", ".join(AUXK_STUDY)
                      + " (or 'all')")
  args = p.parse_args(argv)
  args.k, args.epochs = _kv(args.k, int), _kv(args.epochs, int)
  args.kinds = [k for k in args.kinds.split(",") if k]
  args.methods = [m for m in args.methods.split(",") if m]
  bad = [m for m in args.methods if m not in METHODS]
  args.study = list(AUXK_STUDY) if args.study == "all" else [v for v in args.study.split(",") if v]
  bad += [v for v in args.study if v not in AUXK_STUDY]
  if bad or set(args.kinds) - {"acts", "pixels"}:
    p.error(f"unknown --methods {bad} or --kinds {args.kinds}; methods: {', '.join(METHODS)}")
  if args.smoke:
    args.data, args.expansion = "digits", 4
    args.k, args.epochs = {"pixels": 8, "acts": 8}, {"pixels": 2, "acts": 2}
    args.calibration_runs = min(args.calibration_runs, 2)
    args.seeds, args.classifier_epochs = 2, 1
    args.speed_repeats = 2
  return args


def frequency_figure(freqs: dict, path, title: str):
  """Log-histograms of latent firing frequencies, one panel per data kind, one line per
  method; never-firing latents are counted in the leftmost bin."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(freqs), figsize=(6.5 * len(freqs), 4.2), squeeze=False)
  for ax, (kind, by_method) in zip(axes[0], freqs.items()):
    n_eval = by_method.pop("_n")
    floor = np.log10(0.5 / n_eval)
    bins = np.linspace(floor - 0.25, 0.0, 40)
    for method, f in by_method.items():
      logs = np.log10(np.maximum(f, 0.5 / n_eval))
      dead = float(np.mean(f == 0))
      ax.hist(logs, bins=bins, histtype="step", linewidth=1.4,
              label=f"{method} (dead {100 * dead:.1f}%)")
    ax.axvline(np.log10(0.1), color="grey", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("log10 firing frequency on the training split (leftmost bin: never fires)")
    ax.set_ylabel("latents")
    ax.set_title(kind, fontsize=10)
    ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def run_kind(splits: Splits, args, out=None) -> tuple[list[dict], list[dict], dict]:
  """All methods on one kind of data: the comparison rows, the seed rows of L1 + decoder
  norm and the training-split firing frequencies of every method. With `out`, the rows so
  far are written to out/partial_<kind>.json after every method (a run cut by its time
  limit keeps them)."""
  target = args.k[splits.key]
  rows, seed_rows, freqs = [], [], {"_n": len(splits.train)}
  for method in args.methods:
    coef_field = METHODS[method][1]
    if coef_field is None:
      trained, val, seconds = train_sae(splits, method, None, args, args.seed)
      chosen = {"coef": None, "val": val, "seconds": seconds, "trained": trained}
      tried = [chosen]
    else:
      tried = calibrate(functools.partial(_measure, splits, method, args=args, seed=args.seed),
                        target, GUESSES[(method, splits.key)], args.calibration_runs,
                        args.tolerance, FIRST_SLOPES.get((method, splits.key), -1.0))
      chosen = min(tried, key=lambda t: abs(t["val"]["l0"] - target))
    trained = chosen["trained"]
    test = trained.evaluate(splits.test)
    train_freq = firing_frequencies(trained, splits.train)
    freqs[method] = train_freq
    train_log = [r for r in trained.history if r["split"] == "train"][-1]
    rows.append({"data": splits.key, "method": method,
                 "coefficient": chosen["coef"] if coef_field else "-",
                 "calibration runs": len(tried),
                 "calibration (coef: val L0)": "; ".join(
                     f"{t['coef']:.4g}: {t['val']['l0']:.2f}" for t in tried) if coef_field
                     else "-",
                 "val L0": chosen["val"]["l0"], "val FVU": chosen["val"]["fvu"],
                 "test L0": test["l0"], "test FVU": test["fvu"],
                 "dead (train window)": train_log.get("dead_window_fraction"),
                 "dead (train split)": float(np.mean(train_freq == 0)),
                 "dead (test)": test["dead_fraction"], "dense (test)": test["dense_fraction"],
                 "val FVU at 1/4, 1/2, 3/4, end": ", ".join(
                     f"{r['fvu']:.4f}" for r in trained.history if r["split"] == "eval"),
                 "train s": round(chosen["seconds"], 1),
                 "all calibration s": round(sum(t["seconds"] for t in tried), 1)})
    print(f"{splits.key}: {method}: test L0 {test['l0']:.2f} FVU {test['fvu']:.4f} dead: train "
          f"split {rows[-1]['dead (train split)']:.3f}, test {test['dead_fraction']:.3f} "
          f"({chosen['seconds']:.0f} s)", flush=True)
    if method == "L1 + decoder norm":
      for seed in range(args.seeds):
        if seed == args.seed:
          seeded = trained
        else:
          seeded = train_sae(splits, method, chosen["coef"], args, seed)[0]
        t = seeded.evaluate(splits.test)
        seed_rows.append({"data": splits.key, "seed": seed, "coefficient": chosen["coef"],
                          "target L0": target, "test L0": t["l0"],
                          "relative error": (t["l0"] - target) / target,
                          "within 10%": bool(abs(t["l0"] - target) <= GOAL_L0_TOL * target),
                          "test FVU": t["fvu"]})
    for t in tried:
      t.pop("trained")
    if out is not None:
      _io.write_json(out / f"partial_{splits.key}.json", {
          "rows": rows, "seeds": seed_rows})
  return rows, seed_rows, freqs


def goals(rows: list[dict], seed_rows: list[dict]) -> list[dict]:
  out = []
  for kind in dict.fromkeys(r["data"] for r in rows):
    by = {r["method"]: r for r in rows if r["data"] == kind}
    if "TopK + AuxK" in by:
      aux = by["TopK + AuxK"]
      out.append({"data": kind, "goal": f"TopK + AuxK dead latents <= {GOAL_DEAD:.0%} (never "
                                        "firing on the training split)",
                  "value": aux["dead (train split)"],
                  "met": bool(aux["dead (train split)"] <= GOAL_DEAD)})
      if "L1" in by:
        l1 = by["L1"]
        same = abs(l1["test L0"] - aux["test L0"]) <= GOAL_L0_TOL * aux["test L0"]
        out.append({"data": kind, "goal": "TopK + AuxK FVU below L1's at the same L0",
                    "value": f"{aux['test FVU']:.4f} vs {l1['test FVU']:.4f} "
                             f"(L0 {aux['test L0']:.1f} vs {l1['test L0']:.1f})",
                    "met": bool(same and aux["test FVU"] < l1["test FVU"])})
    seeds = [r for r in seed_rows if r["data"] == kind]
    if seeds:
      out.append({"data": kind, "goal": "L1 + decoder norm: test L0 within 10% of the target "
                                        f"on every seed ({len(seeds)})",
                  "value": ", ".join(f"{r['test L0']:.2f}" for r in seeds),
                  "met": all(r["within 10%"] for r in seeds)})
  return out


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  t_start = time.time()
  pixels = load_pixels(args.data)
  if args.smoke:
    pixels = pixels.subset(512, 128)
  data = {}
  facts = {}
  if "acts" in args.kinds:
    data["acts"], facts = load_activations(pixels, epochs=args.classifier_epochs,
                                           seed=args.seed)
  if "pixels" in args.kinds:
    side = int(round(np.sqrt(pixels.dim)))
    data["pixels"] = pool_pixels(pixels, side, args.pixel_pool if side == 28 else 1)
  if args.study:
    study = [row for splits in data.values() for row in auxk_study(splits, args, args.study)]
    result = {"smoke": args.smoke, "data": {k: v.note for k, v in data.items()},
              "classifier": facts, "settings": {k: v for k, v in vars(args).items()},
              "study": study, "wall_s": time.time() - t_start}
    table = [{k: v for k, v in r.items()
              if k not in ("dead window (step, share, auxk)", "val (step, L0, FVU)")}
             for r in study]
    json_path, md_path = _io.write_results(out, result, {"AuxK study (validation)": table},
                                           "Sparse dictionaries: the AuxK study")
    print(md_path.read_text())
    return result
  rows, seed_rows, freqs = [], [], {}
  for kind, splits in data.items():
    r, s, f = run_kind(splits, args, out)
    rows += r
    seed_rows += s
    freqs[f"{kind}: {splits.dim} inputs, {args.expansion * splits.dim} latents"] = f
  figure = frequency_figure(freqs, out / "firing_frequencies.png",
                            "Latent firing frequencies (training split), seed " + str(args.seed))
  speed = []
  if not args.no_speed:
    dim = pixels.dim
    speed = speed_rows(dim, args.expansion * dim, args.k["pixels"], args.batch_size, args.seed,
                       args.speed_repeats, 0.05 if args.smoke else 2.0)
  goal_rows = goals(rows, seed_rows)
  tables = {"Comparison at the same L0 (coefficients chosen on validation L0, test once)": rows,
            "L1 + decoder norm: the chosen coefficient on other seeds": seed_rows,
            "Goals": goal_rows,
            "Train step speed: ae_jax against the PyTorch TopK SAE, in turns": speed}
  result = {"smoke": args.smoke, "data": {k: v.note for k, v in data.items()},
            "classifier": facts,
            "settings": {k: (v if not isinstance(v, dict) else dict(v))
                         for k, v in vars(args).items()},
            "rows": rows, "seeds": seed_rows, "goals": goal_rows, "speed": speed,
            "figure": str(figure), "wall_s": time.time() - t_start}
  json_path, md_path = _io.write_results(out, result, tables, "Sparse dictionaries")
  print(md_path.read_text())
  print(f"wrote {json_path}, {md_path}, {figure} in {time.time() - t_start:.0f} s")
  return result


if __name__ == "__main__":
  main()
