"""VAE, IWAE and VampPrior on statically binarized MNIST, beside a pythae peer.

The settings `iwae5_2l` and `iwae50_2l` are the IWAE paper's two stochastic layers
(784-200-200-z1(100)-100-100-z2(50), tanh; `model.latent2_dim`). pythae has no such
model, so they train without a peer and have no anchor in pythae's table.

Protocol: train on `binarized_mnist:train` (50,000), keep the parameters of the epoch
with the best validation objective on `valid` (10,000), report once on the whole `test`
split (10,000): the importance-sampled NLL (k = --nll-samples) with its standard error,
the ELBO and the active units (Burda et al.: Cov_x(E_q[u | x]) > 0.01). Every model is
scored by the same JAX importance sampler; a pythae (PyTorch) model is first copied
into the JAX model of the same architecture. Training wall time counts optimizer steps
only; evaluations (validation, the curve) pause the clock. The curve is the test NLL
(k = 100 on 1,000 test images drawn at random, the same for every run) against that
training wall time. (Not the first 1,000: the test file is ordered by digit, so those are
almost all zeros; curves of runs before session 13 were drawn on them.)

Full length (hundreds of epochs) on a quiet machine:
  python -m experiments.vae_binarized_mnist --models vae,iwae5,iwae50,vamp \\
      --peer-models vae,iwae5,iwae50,vamp --epochs 0 --nll-samples 5000
(--epochs 0 = each setting's own epoch count, as in pythae's reproduction scripts.)
The two implementations can also run one after the other in two jobs: the ae_jax run
first, then the peer alone (`--models '' --peer-models vae --epochs N`) with
`--earlier <first run>/result.json`, which draws and pairs the two curves.

Runs longer than one sitting (IWAE's 3,280 epochs, a 10-minute slot on a lent GPU):
`--workdir DIR` checkpoints each ae_jax run (its optimizer state, its best validation
parameters, the epoch order's random state, the curve and the clock) every
`--checkpoint-every` epochs into DIR/<setting>, and the same command resumes it, to the
same parameters as an uninterrupted run. `--stop-after-minutes M` ends this sitting
after M minutes (a checkpoint is written; with `--score-unfinished` the best validation
epoch so far is also scored, as a figure reached); the sitting that completes the epochs
scores the run. Each sitting's CPU model, epochs and training seconds are
kept in the result. The pythae peer is not checkpointed: it trains in the sitting after
its ae_jax run has finished.
"""

import copy
import dataclasses
import functools
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import checkpoint, configs, data as data_lib, families, likelihood, parallel
from ae_jax.errors import CheckpointError
from ae_jax.fit import Trained, evaluate
from ae_jax.train import create_train_state, eval_params, train_step
from ae_jax import results as _io

NAME = "vae_binarized_mnist"
SHAPE = (28, 28, 1)

# pythae's reproduction settings (examples/scripts/reproducibility/{vae,iwae,vamp}.py).
# The VampPrior there uses gated dense layers and a hardtanh on log-variance; ae_jax's
# MLP uses plain dense layers of the same widths (a stated difference).
SETTINGS = {
    "vae": dict(widths=(400,), latent=40, activation="relu", iw=1, prior="standard",
                batch=100, lr=1e-3, epochs=1000, warmup_epochs=0),
    "iwae5": dict(widths=(200, 200), latent=50, activation="tanh", iw=5, prior="standard",
                  batch=20, lr=1e-3, epochs=3280, warmup_epochs=0),
    "iwae50": dict(widths=(200, 200), latent=50, activation="tanh", iw=50, prior="standard",
                   batch=20, lr=1e-3, epochs=3280, warmup_epochs=0),
    "vamp": dict(widths=(300, 300), latent=40, activation="relu", iw=1, prior="vamp",
                 batch=100, lr=1e-4, epochs=2000, warmup_epochs=100, components=500),
    # Burda et al.'s two stochastic layers: z1 of 100 units, z2 of 50, 100-100 between them
    "iwae5_2l": dict(widths=(200, 200), latent=100, latent2=50, latent2_widths=(100, 100),
                     activation="tanh", iw=5, prior="standard", batch=20, lr=1e-3,
                     epochs=3280, warmup_epochs=0),
    "iwae50_2l": dict(widths=(200, 200), latent=100, latent2=50, latent2_widths=(100, 100),
                      activation="tanh", iw=50, prior="standard", batch=20, lr=1e-3,
                      epochs=3280, warmup_epochs=0),
}
# settings pythae has no model for (two stochastic layers): no peer, no anchor
NO_PEER = frozenset(name for name, s in SETTINGS.items() if s.get("latent2"))
_DEFAULT_SETTINGS = copy.deepcopy(SETTINGS)   # main() starts from these on every call
# The published figures (NLL in nats, static binarization).
ANCHORS = {"vae": (89.78, 89.9), "iwae5": (None, None), "iwae50": (86.82, 87.1),
           "vamp": (85.79, 85.57)}
GOALS = {"vae": 89.5, "iwae50": 86.8, "vamp": 85.8}
CURVE_IMAGES, CURVE_SAMPLES, CURVE_SEED = 1000, 100, 0
# Which test images the curve reads, recorded with every run and checkpoint: a curve is
# paired or resumed only with one read on the same images.
CURVE_SUBSET = f"{CURVE_IMAGES} test images drawn at random (numpy default_rng({CURVE_SEED}))"
# what every curve read before session 13 (and what its checkpoints, which recorded no
# subset, were written with): kept only to resume or pair with those runs
CURVE_FIRST = f"the first {CURVE_IMAGES} test images"
CURVE_SUBSETS = {"random": CURVE_SUBSET, "first": CURVE_FIRST}


def curve_images(test_x, subset: str = CURVE_SUBSET):
  """The curve's test images: by default CURVE_IMAGES of them drawn at random, in file
  order. The test file is ordered by digit (its first 1,000 images are almost all zeros,
  ~11 nats harder than the split), so a prefix would not stand for the split; CURVE_FIRST
  (that prefix) only resumes or pairs with runs from before the draw."""
  n = min(CURVE_IMAGES, len(test_x))
  if subset == CURVE_FIRST:
    return test_x[:n]
  return test_x[np.sort(np.random.default_rng(CURVE_SEED).choice(len(test_x), n, replace=False))]


def config_for(name: str, epochs: int, steps_per_epoch: int, seed: int):
  s = SETTINGS[name]
  cfg = configs.get_preset("default")
  cfg.seed = seed
  cfg.data.val_fraction = 0.0
  cfg.model.family, cfg.model.network, cfg.model.recon_loss = "vae", "mlp", "bce"
  cfg.model.widths, cfg.model.latent_dim = tuple(s["widths"]), s["latent"]
  cfg.model.activation = s["activation"]
  cfg.model.init = s.get("init", "flax")
  cfg.model.prior = s["prior"]
  cfg.model.vamp_components = s.get("components", 500)
  cfg.model.latent2_dim = s.get("latent2", 0)
  cfg.model.latent2_widths = tuple(s.get("latent2_widths", (100, 100)))
  cfg.objective.iw_samples = s["iw"]
  cfg.objective.beta_warmup_steps = s["warmup_epochs"] * steps_per_epoch
  cfg.optim.learning_rate = s["lr"]
  cfg.optim.ema_decay = s.get("ema", 0.0)
  if s.get("milestones"):   # PyTorch's MultiStepLR, stepped once per epoch (pythae's scripts)
    cfg.optim.schedule = "multistep"
    cfg.optim.milestones = tuple(e * steps_per_epoch for e in s["milestones"])
    cfg.optim.milestone_gamma = s["gamma"]
  cfg.train.batch_size = s["batch"]
  cfg.train.num_epochs = epochs
  cfg.train.parallel = "jit"
  return cfg


@dataclasses.dataclass
class Run:
  """One training run: its curve, selected parameters and budget."""
  name: str
  impl: str
  trained: Trained = None       # the parameters of the best validation epoch
  final: Trained = None         # those of the last epoch (--also-final)
  epochs: int = 0
  train_seconds: float = 0.0
  best_epoch: int = 0
  best_valid: float = math.inf
  curve: list = dataclasses.field(default_factory=list)   # (seconds, epoch, test NLL k=100)
  sittings: list = dataclasses.field(default_factory=list)  # with --workdir: one per sitting
  finished: bool = True         # False: stopped by --stop-after-minutes, resume to finish


def _curve_point(run: Run, trained: Trained, curve_x, seed: int):
  nll = likelihood.importance_nll(trained, curve_x, num_samples=CURVE_SAMPLES, chunk=100,
                                  seed=seed)
  run.curve.append((round(run.train_seconds, 2), run.epochs, float(nll.mean())))


def _select(run: Run, trained: Trained, valid):
  loss = evaluate(trained.config, trained.model, trained.params, valid, "jit",
                  batch_size=500)["loss"]
  if loss < run.best_valid:
    run.best_valid, run.best_epoch = float(loss), run.epochs
    run.trained = dataclasses.replace(trained, params=jax.tree.map(np.asarray, trained.params))


_RUN_FIELDS = ("epochs", "train_seconds", "best_epoch", "best_valid", "curve", "sittings")


class RunCheckpoints:
  """The checkpoints of one resumable ae_jax run in `directory`: per saved epoch the train
  state, the best validation parameters so far and a JSON record (config, the flags that
  must match to resume, the Run's counters and curve, the epoch order's random state),
  written together so that they always agree."""

  def __init__(self, directory):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=2, create=True,
                                           enable_async_checkpointing=False,
                                           cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "best", "meta"))

  def save(self, state, best_params, run: Run, order_rng, cfg, signature: dict) -> None:
    ocp = self._ocp
    kind, keys, pos, has_gauss, cached = order_rng.get_state()
    meta = {"config": cfg.to_json(), "signature": signature,
            "run": {k: getattr(run, k) for k in _RUN_FIELDS},
            "order_rng": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss),
                          float(cached)]}
    if run.epochs in self.manager.all_steps():
      self.manager.delete(run.epochs)
    self.manager.save(run.epochs, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(checkpoint.state_tree(state)),
        best=ocp.args.StandardSave(best_params), meta=ocp.args.JsonSave(meta)))
    self.manager.wait_until_finished()

  def restore(self, state, cfg, signature: dict):
    """(state, best parameters, meta) of the newest checkpoint, or None when there is
    none. A checkpoint written with other flags raises CheckpointError."""
    ocp = self._ocp
    steps = sorted(self.manager.all_steps())
    if not steps:
      return None
    meta = self.manager.restore(steps[-1], args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]
    checkpoint.check_architecture(meta, cfg, str(self.directory))
    # checkpoints from before the curve's draw recorded no subset: they read the first images
    saved = {"curve_images": CURVE_FIRST, **meta["signature"]}
    diff = sorted(k for k in set(saved) | set(signature) if saved.get(k) != signature.get(k))
    if diff:
      detail = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {signature.get(k)!r}"
                         for k in diff)
      raise CheckpointError(
          f"{self.directory} holds a run with other settings ({detail}); resume it with "
          "the flags it was started with, or give a new --workdir")
    shape = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    got = self.manager.restore(steps[-1], args=ocp.args.Composite(
        state=ocp.args.StandardRestore(shape(checkpoint.state_tree(state))),
        best=ocp.args.StandardRestore(shape(state.params)), meta=ocp.args.JsonRestore()))
    tree = got["state"]
    state = state.replace(params=tree["params"], opt_state=tree["opt_state"],
                          step=tree["step"])
    return state, got["best"], got["meta"]

  def close(self):
    self.manager.close()


def _signature(name: str, epochs: int, seed: int, n_train: int,
               curve_subset: str = CURVE_SUBSET) -> dict:
  """What a resumed run must share with the run that wrote the checkpoint."""
  s = {k: (list(v) if isinstance(v, tuple) else v) for k, v in SETTINGS[name].items()}
  return {"setting": name, **s, "epochs": epochs, "seed": seed, "train_examples": n_train,
          "curve_images": curve_subset}


def train_jax(name, train, valid, curve_x, *, epochs, budget_s, seed, curve_every=1,
              steps_per_call=25, patience=0, workdir=None, checkpoint_every=10,
              stop_after_s=math.inf, curve_subset=CURVE_SUBSET):
  """Train the ae_jax model of setting `name` for `epochs` epochs, until `budget_s`
  seconds of training, or (patience > 0) until the validation objective has not improved
  for `patience` epochs; returns a Run with the parameters of the best validation epoch.

  With `workdir`, the run is checkpointed every `checkpoint_every` epochs (and when it
  stops) into workdir/name and resumed from there; `stop_after_s` ends this sitting after
  that many seconds of wall time, returning a Run with finished=False."""
  s = SETTINGS[name]
  n = len(train) // s["batch"] * s["batch"]
  steps_per_epoch = n // s["batch"]
  cfg = config_for(name, epochs, steps_per_epoch, seed)
  model = families.build_model(cfg, SHAPE)
  family = families.get_family("vae")
  state = create_train_state(cfg, model, SHAPE, jax.random.key(seed), steps_per_epoch * epochs)
  k = math.gcd(steps_per_call, steps_per_epoch)
  step = parallel.compile_step(functools.partial(train_step, model=model, family=family,
                                                 config=cfg), "jit", steps_per_call=k)
  scaler = data_lib.Scaler("none").fit(train.x[:1])
  rng, order_rng = jax.random.key(seed + 1), np.random.RandomState(seed)
  run = Run(name, "ae_jax")
  x = train.x
  sitting_start, first_epoch = time.perf_counter(), 0
  ckpt = signature = None
  if workdir:
    ckpt = RunCheckpoints(pathlib.Path(workdir) / name)
    signature = _signature(name, epochs, seed, len(x), curve_subset)
    got = ckpt.restore(state, cfg, signature)
    if got is not None:
      state, best, meta = got
      for field, value in meta["run"].items():
        setattr(run, field, [tuple(p) for p in value] if field == "curve" else value)
      kind, keys, pos, has_gauss, cached = meta["order_rng"]
      order_rng.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
      run.trained = Trained(cfg, model, jax.tree.map(np.asarray, best), scaler, SHAPE,
                            int(state.step))
      first_epoch = run.epochs
      print(f"{name}: resumed from {ckpt.directory} at epoch {run.epochs} "
            f"({run.train_seconds:.0f} s of training so far)", flush=True)
  trained = Trained(cfg, model, eval_params(state), scaler, SHAPE, int(state.step))
  stalled = patience > 0 and run.epochs and run.epochs - run.best_epoch >= patience
  sitting_seconds = run.train_seconds

  def save():
    run.sittings = [*[h for h in run.sittings if h.get("from") != first_epoch],
                    {"cpu": _io.cpu_info()["model"], "from": first_epoch, "to": run.epochs,
                     "train_seconds": round(run.train_seconds - sitting_seconds, 2)}]
    ckpt.save(state, run.trained.params, run, order_rng, cfg, signature)

  while run.epochs < epochs and run.train_seconds < budget_s and not stalled:
    if run.epochs > first_epoch and time.perf_counter() - sitting_start >= stop_after_s:
      run.finished = False
      break
    order = order_rng.permutation(len(x))[:n].reshape(-1, k, s["batch"])
    start = time.perf_counter()
    for idx in order:
      state, _ = step(state, {"x": x[idx] if k > 1 else x[idx[0]]}, rng)
    jax.block_until_ready(state.params)
    run.train_seconds += time.perf_counter() - start
    run.epochs += 1
    trained = Trained(cfg, model, eval_params(state), scaler, SHAPE, int(state.step))
    _select(run, trained, valid)
    stalled = patience > 0 and run.epochs - run.best_epoch >= patience
    last = run.epochs >= epochs or run.train_seconds >= budget_s or stalled
    if run.epochs % curve_every == 0 or last:
      _curve_point(run, trained, curve_x, seed)
    if ckpt and (run.epochs % checkpoint_every == 0 or last):
      save()
  if ckpt:
    if not run.finished:
      save()
      print(f"{name}: stopped at epoch {run.epochs} of {epochs} after this sitting's "
            f"{stop_after_s / 60:g} minutes; run the same command to resume", flush=True)
    ckpt.close()
  run.final = dataclasses.replace(trained, params=jax.tree.map(np.asarray, trained.params))
  return run


# ---- the pythae peer ------------------------------------------------------------------

def pythae_available() -> bool:
  try:
    import pythae  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _pythae_model(name: str, steps_per_epoch: int):
  """A pythae VAE / IWAE / VAMP with MLP encoder and decoder of setting `name`."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from pythae.models import IWAE, IWAEConfig, VAE, VAEConfig, VAMP, VAMPConfig  # pylint: disable=g-import-not-at-top
  from pythae.models.base.base_utils import ModelOutput  # pylint: disable=g-import-not-at-top
  from pythae.models.nn import BaseDecoder, BaseEncoder  # pylint: disable=g-import-not-at-top
  s = SETTINGS[name]
  act = {"relu": nn.ReLU, "tanh": nn.Tanh}[s["activation"]]

  def stack(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
      layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers)

  class Encoder(BaseEncoder):
    def __init__(self):
      BaseEncoder.__init__(self)
      self.body = stack([784, *s["widths"]])
      self.embedding = nn.Linear(s["widths"][-1], s["latent"])
      self.log_var = nn.Linear(s["widths"][-1], s["latent"])

    def forward(self, x):
      h = self.body(x.reshape(x.shape[0], -1))
      return ModelOutput(embedding=self.embedding(h), log_covariance=self.log_var(h))

  class Decoder(BaseDecoder):
    def __init__(self):
      BaseDecoder.__init__(self)
      rev = list(reversed(s["widths"]))
      self.body = stack([s["latent"], *rev])
      self.out = nn.Linear(rev[-1], 784)

    def forward(self, z):
      logits = self.out(self.body(z))
      return ModelOutput(reconstruction=torch.sigmoid(logits).reshape(z.shape[0], 1, 28, 28))

  common = dict(input_dim=(1, 28, 28), latent_dim=s["latent"], reconstruction_loss="bce")
  if s["prior"] == "vamp":
    config = VAMPConfig(**common, number_components=s["components"],
                        linear_scheduling_steps=s["warmup_epochs"])
    model = VAMP(config, encoder=Encoder(), decoder=Decoder())
  elif s["iw"] > 1:
    model = IWAE(IWAEConfig(**common, number_samples=s["iw"]), encoder=Encoder(),
                 decoder=Decoder())
  else:
    model = VAE(VAEConfig(**common), encoder=Encoder(), decoder=Decoder())
  del steps_per_epoch
  return model


def pythae_to_trained(net, name: str, epochs: int) -> Trained:
  """The pythae model's weights in the ae_jax model of the same setting, so both are
  scored by the same estimator. torch Linear weights (out, in) become Dense kernels."""
  cfg = config_for(name, max(epochs, 1), 1, 0)
  model = families.build_model(cfg, SHAPE)
  params = create_train_state(cfg, model, SHAPE, jax.random.key(0), 1).params
  dense = lambda lin: {"kernel": jnp.asarray(lin.weight.detach().numpy().T),
                       "bias": jnp.asarray(lin.bias.detach().numpy())}
  linears = lambda seq: [m for m in seq if hasattr(m, "weight")]
  enc, dec = net.encoder, net.decoder
  p = dict(params["params"])
  p["encoder"] = {f"Dense_{i}": dense(m) for i, m in enumerate(linears(enc.body))}
  p["to_mean"], p["to_logvar"] = dense(enc.embedding), dense(enc.log_var)
  p["decoder"] = {f"Dense_{i}": dense(m) for i, m in enumerate(linears(dec.body) + [dec.out])}
  if SETTINGS[name]["prior"] == "vamp":
    import torch  # pylint: disable=g-import-not-at-top
    with torch.no_grad():
      u = net.pseudo_inputs(net.idle_input)                   # (K, 784) in [0, 1]
    p["pseudo_inputs"] = jnp.asarray(u.numpy().reshape(-1, *SHAPE))
  new = {"params": p}
  if jax.tree.structure(new) != jax.tree.structure(params):
    raise ValueError(f"the pythae model does not match the ae_jax model of {name!r}")
  return Trained(cfg, model, new, data_lib.Scaler("none").fit(np.zeros((1, *SHAPE))), SHAPE)


def train_pythae(name, train, valid, curve_x, *, epochs, seed, curve_every=1):
  """pythae's model of setting `name`, trained with Adam for `epochs` epochs in a plain
  loop (the model's own forward and loss; pythae's trainer adds logging and saving)."""
  import torch  # pylint: disable=g-import-not-at-top
  from pythae.data.datasets import DatasetOutput  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  s = SETTINGS[name]
  n = len(train) // s["batch"] * s["batch"]
  net = _pythae_model(name, n // s["batch"])
  opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
  sched = (torch.optim.lr_scheduler.MultiStepLR(opt, list(s["milestones"]), s["gamma"])
           if s.get("milestones") else None)
  flat = torch.as_tensor(train.x.reshape(len(train), 1, 28, 28))
  gen = torch.Generator().manual_seed(seed)
  run = Run(name, "pythae")
  for epoch in range(epochs):
    net.train()
    start = time.perf_counter()
    order = torch.randperm(len(flat), generator=gen)[:n].reshape(-1, s["batch"])
    for idx in order:
      out = net(DatasetOutput(data=flat[idx]), epoch=epoch)
      opt.zero_grad()
      out.loss.backward()
      opt.step()
    if sched is not None:
      sched.step()
    run.train_seconds += time.perf_counter() - start
    run.epochs += 1
    net.eval()
    trained = pythae_to_trained(net, name, epochs)
    _select(run, trained, valid)
    if run.epochs % curve_every == 0 or run.epochs == epochs:
      _curve_point(run, trained, curve_x, seed)
  return run


# ---- report -----------------------------------------------------------------------------

def score(run: Run, test, nll_samples: int, seed: int, final: bool = False,
          valid=None) -> dict:
  """Test metrics of the run's best validation epoch, or (final=True) of its last epoch.

  With `valid`, also the validation NLL (k = 100, whole split) of the same parameters:
  what variants of a setting (rate, warm-up, batch) are compared on, before their test
  rows are read."""
  t = run.final if final else run.trained
  valid_nll = None
  if valid is not None:
    valid_nll = float(likelihood.importance_nll(t, valid.x, num_samples=CURVE_SAMPLES,
                                                chunk=100, seed=seed).mean())
  metrics = likelihood.likelihood_metrics(t, test.x, num_samples=nll_samples, seed=seed,
                                          progress=False)
  published, reference = ANCHORS.get(run.name, (None, None))
  goal = GOALS.get(run.name)
  return {"model": run.name, "impl": run.impl, "epochs": run.epochs,
          "selection": "final epoch" if final else "best valid",
          "selected_epoch": run.epochs if final else run.best_epoch,
          "init": "torch" if run.impl == "pythae" else SETTINGS[run.name].get("init", "flax"),
          "lr": SETTINGS[run.name]["lr"],
          "ema": 0.0 if run.impl == "pythae" else SETTINGS[run.name].get("ema", 0.0),
          "train_s": round(run.train_seconds, 1),
          "valid_loss": None if final else round(run.best_valid, 3),
          "valid_nll_k100": valid_nll,
          "test_nll": metrics["nll"], "nll_stderr": metrics["nll_stderr"],
          "nll_samples": nll_samples, "test_elbo": metrics["elbo"],
          "active_units": metrics["active_units"], "pythae_published": published,
          "reference": reference, "goal": goal,
          "goal_met": None if goal is None else bool(metrics["nll"] <= goal)}


def time_to_reach(curve, target: float):
  """Training seconds at the first curve point at or below `target` (None if never)."""
  return next((t for t, _, nll in curve if nll <= target), None)


def speed_row(name: str, pair: dict) -> dict | None:
  """Training seconds each implementation needed to reach a common curve NLL: the worse
  of the two best curve values, which both reached (None without a peer run)."""
  if not {"ae_jax", "pythae"} <= set(pair):
    return None
  best = {impl: min(nll for _, _, nll in run.curve) for impl, run in pair.items()}
  target = max(best.values())
  t_jax = time_to_reach(pair["ae_jax"].curve, target)
  t_peer = time_to_reach(pair["pythae"].curve, target)
  return {"model": name, "common_curve_nll": round(target, 2),
          "ae_jax_s_to_reach_it": t_jax, "pythae_s_to_reach_it": t_peer,
          "ratio": t_jax / t_peer, "ae_jax_train_s": round(pair["ae_jax"].train_seconds, 1),
          "pythae_train_s": round(pair["pythae"].train_seconds, 1)}


def earlier_runs(path, curve_subset: str = CURVE_SUBSET) -> list[Run]:
  """The runs of an earlier result.json of this script (their curves and training time,
  no parameters), to draw and pair with this run's: e.g. a peer trained alone later."""
  path = pathlib.Path(path)
  try:
    earlier = json.loads(path.read_text())
    subset = earlier.get("curve_images", CURVE_FIRST)
    if earlier["curves"] and subset != curve_subset:
      raise SystemExit(f"--earlier {path}: its curves read {subset}, this run's read "
                       f"{curve_subset}; they cannot be paired (re-run the earlier job)")
    seconds = {(r["impl"], r["model"]): r["train_s"] for r in earlier["rows"]
               if r.get("selection", "best valid") == "best valid"}
    runs = []
    for key, curve in earlier["curves"].items():
      impl, name = key.split(":")
      runs.append(Run(name, impl, train_seconds=seconds[(impl, name)],
                      epochs=curve[-1][1] if curve else 0,
                      curve=[tuple(point) for point in curve]))
  except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
    raise SystemExit(f"--earlier {path}: not a result.json of this script ({e!r})") from e
  return runs


def plot_curves(runs, path, subset: str = CURVE_SUBSET):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for run in runs:
    t, _, nll = zip(*run.curve)
    ax.plot(t, nll, marker="o", ms=3, label=f"{run.impl} {run.name}")
  ax.set_xlabel("training wall time (s)")
  which = "first" if subset == CURVE_FIRST else "random"
  ax.set_ylabel(f"test NLL (nats), k={CURVE_SAMPLES}, {which} {CURVE_IMAGES} test images")
  ax.set_title("binarized MNIST")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--models", default="vae", help=f"comma list of {', '.join(SETTINGS)}")
  p.add_argument("--peer-models", default="vae",
                 help="settings also trained with pythae (for the epochs its ae_jax run took); "
                 "one not in --models trains alone, for --epochs or the setting's own count")
  p.add_argument("--epochs", type=int, default=0, help="0 = each setting's own epochs")
  p.add_argument("--budget-minutes", type=float, default=0.0,
                 help="> 0: stop each ae_jax run after this much training time; the peer "
                 "then trains for the same number of epochs")
  p.add_argument("--patience", type=int, default=0,
                 help="> 0: stop an ae_jax run once the validation objective has not improved "
                 "for this many epochs (static binarization overfits); the peer then trains "
                 "for the same number of epochs")
  p.add_argument("--warmup-epochs", type=int, default=-1,
                 help=">= 0: KL warm-up epochs for every setting (both implementations) instead "
                 "of each setting's own (VampPrior: 100 of 2,000 epochs); for budgeted runs")
  p.add_argument("--lr-milestones", default="",
                 help="comma list of epochs at which the learning rate is multiplied by "
                 "--lr-gamma, in both implementations (pythae's VAE script: "
                 "200,350,500,750,1000 with gamma 10**-0.2); empty = constant rate")
  p.add_argument("--lr-gamma", type=float, default=10 ** -0.2)
  p.add_argument("--nll-samples", type=int, default=5000)
  p.add_argument("--curve-every", type=int, default=1, help="epochs between curve points")
  p.add_argument("--curve-images", default="random", choices=tuple(CURVE_SUBSETS),
                 help="the test images the curve reads: 1,000 drawn at random, or the first "
                 "1,000 (almost all zeros: the file is ordered by digit), which only resumes "
                 "a checkpoint or pairs with an --earlier run from before the draw")
  p.add_argument("--earlier", default="",
                 help="result.json of an earlier run of this script on the same machine: its "
                 "curves are drawn beside this run's and paired with them in the speed table "
                 "(e.g. --models '' --peer-models vae, the peer alone, after an ae_jax run)")
  p.add_argument("--also-final", action="store_true",
                 help="also score each ae_jax run's last epoch, as a check on the selection; "
                 "the best validation epoch stays the headline row (it is also what pythae "
                 "keeps: its BaseTrainer saves the best eval-loss model as `final_model`)")
  p.add_argument("--init", default="flax", choices=("flax", "torch"),
                 help="ae_jax's initialisers (`model.init`): Flax's LeCun-normal kernels and "
                 "zero biases, or PyTorch's nn.Linear defaults (kernel and bias uniform in "
                 "+-1/sqrt(fan_in)), which pythae's models get")
  p.add_argument("--batch", type=int, default=0,
                 help="> 0: every setting's batch size, in both implementations, instead of "
                 "its own (pythae does not publish its VAE's training config, so the VAE's "
                 "batch of 100 is this project's reading)")
  p.add_argument("--lr", type=float, default=0.0,
                 help="> 0: every setting's (initial) Adam learning rate, in both "
                 "implementations, instead of its own (the VAE's 1e-3 is this project's "
                 "reading; --lr-milestones still scales it)")
  p.add_argument("--workdir", default="",
                 help="checkpoint each ae_jax run into WORKDIR/<setting> and resume it from "
                 "there (the same flags are required to resume)")
  p.add_argument("--checkpoint-every", type=int, default=10,
                 help="epochs between checkpoints (with --workdir)")
  p.add_argument("--stop-after-minutes", type=float, default=0.0,
                 help="> 0 (with --workdir): end this sitting after this many minutes, "
                 "checkpointed; the same command resumes")
  p.add_argument("--score-unfinished", action="store_true",
                 help="when a sitting stops before the run ends, also score the best "
                 "validation epoch so far on the test split (a figure reached, marked "
                 "unfinished; the finished run is scored as usual)")
  p.add_argument("--ema", type=float, default=0.0,
                 help="> 0: ae_jax selects, scores and curves the exponential moving average "
                 "of its parameters with this decay (`optim.ema_decay`, e.g. 0.999); pythae's "
                 "trainer has no such setting, so its runs are unchanged")
  args = p.parse_args(argv)
  if not 0 <= args.ema < 1:
    p.error(f"--ema must be a decay in [0, 1) (0 = off), got {args.ema}")
  if args.checkpoint_every < 1:
    p.error(f"--checkpoint-every must be at least 1 epoch, got {args.checkpoint_every}")
  if not (args.stop_after_minutes >= 0 and math.isfinite(args.stop_after_minutes)):
    p.error(f"--stop-after-minutes must be >= 0 (0 = off), got {args.stop_after_minutes}")
  if args.stop_after_minutes and not args.workdir:
    p.error("--stop-after-minutes needs --workdir, where the sitting's work is kept")
  if args.score_unfinished and not args.stop_after_minutes:
    p.error("--score-unfinished scores a sitting that --stop-after-minutes ends; add it")
  if args.batch < 0:
    p.error(f"--batch must be positive (0 = each setting's own), got {args.batch}")
  if not (args.lr >= 0 and math.isfinite(args.lr)):
    p.error(f"--lr must be a positive learning rate (0 = each setting's own), got {args.lr}")
  out = _io.out_dir(args, NAME)
  models = [m for m in args.models.split(",") if m]
  peers = [m for m in args.peer_models.split(",") if m]
  unknown = sorted(set(models + peers) - set(SETTINGS))
  if unknown:
    p.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
  if set(peers) & NO_PEER:
    p.error(f"pythae has no model with two stochastic layers: drop "
            f"{', '.join(sorted(set(peers) & NO_PEER))} from --peer-models")
  nll_samples = args.nll_samples
  SETTINGS.clear()
  SETTINGS.update(copy.deepcopy(_DEFAULT_SETTINGS))
  if args.warmup_epochs >= 0:
    for s in SETTINGS.values():
      s["warmup_epochs"] = args.warmup_epochs
  for s in SETTINGS.values():
    s["init"] = args.init
    s["ema"] = args.ema
    if args.batch:
      s["batch"] = args.batch
    if args.lr:
      s["lr"] = args.lr
  try:
    milestones = tuple(int(e) for e in args.lr_milestones.split(",") if e.strip())
  except ValueError:
    p.error(f"--lr-milestones takes a comma list of epochs, got {args.lr_milestones!r}")
  if milestones:
    if list(milestones) != sorted(set(milestones)) or milestones[0] <= 0:
      p.error(f"--lr-milestones must be increasing positive epochs, got {args.lr_milestones!r}")
    if not 0 < args.lr_gamma <= 1:
      p.error(f"--lr-gamma must be in (0, 1], got {args.lr_gamma}")
    for s in SETTINGS.values():
      s["milestones"], s["gamma"] = milestones, args.lr_gamma
  subset = CURVE_SUBSETS[args.curve_images]
  earlier = earlier_runs(args.earlier, subset) if args.earlier else []
  for run in earlier:
    if run.name in (models if run.impl == "ae_jax" else peers):
      p.error(f"--earlier {args.earlier} holds a {run.impl} {run.name} run, which this run "
              "trains too; drop it from --models / --peer-models or drop --earlier")
  # every flag is checked before the data is read, so a bad flag fails fast (and without data)
  train, valid, test = (data_lib.load("binarized_mnist", s) for s in ("train", "valid", "test"))
  if args.smoke:
    train, valid, test = (_io.smoke_subset(d, n) for d, n in ((train, 400), (valid, 100),
                                                             (test, 100)))
    for s in SETTINGS.values():
      s["components"] = min(s.get("components", 500), 10)
    nll_samples = min(nll_samples, 20)
  curve_x = curve_images(test.x, subset)
  budget = args.budget_minutes * 60 if args.budget_minutes > 0 else math.inf
  rows, runs = [], []
  peer_ok = pythae_available()
  def report(run, final=False):
    """Score `run` on the test split (its last epoch with final) into rows, and print it."""
    if not final:
      runs.append(run)
    rows.append(score(run, test, nll_samples, args.seed, final=final, valid=valid))
    print(rows[-1], flush=True)

  def train_peer(name, epochs):
    report(train_pythae(name, train, valid, curve_x, epochs=epochs, seed=args.seed,
                        curve_every=args.curve_every))

  stop_after = args.stop_after_minutes * 60 if args.stop_after_minutes > 0 else math.inf
  unfinished = {}
  for name in models:
    epochs = args.epochs or SETTINGS[name]["epochs"]
    run = train_jax(name, train, valid, curve_x, epochs=epochs, budget_s=budget, seed=args.seed,
                    curve_every=args.curve_every, patience=args.patience,
                    workdir=args.workdir or None, checkpoint_every=args.checkpoint_every,
                    stop_after_s=stop_after, curve_subset=subset)
    if not run.finished:   # this sitting is over: the checkpoint holds the work
      unfinished[name] = run.epochs
      if args.score_unfinished:   # the figure reached so far, marked as such
        rows.append({**score(run, test, nll_samples, args.seed, valid=valid),
                     "selection": f"best valid so far (unfinished: {run.epochs} of {epochs} "
                                  "epochs)"})
        print(rows[-1], flush=True)
      break
    report(run)
    if args.also_final:
      report(run, final=True)
    if name in peers and peer_ok:
      train_peer(name, run.epochs)
  # a peer setting without its ae_jax run (e.g. to add the peer to an earlier ae_jax run
  # on the same machine) trains alone for --epochs, or the setting's own count
  if unfinished:   # what the sitting reached: its curve and sittings (and, asked, its score)
    png = plot_curves(runs + [run], out / "nll_vs_time.png", subset)
    result = {"unfinished": unfinished, "workdir": args.workdir, "rows": rows,
              "curve_images": subset,
              "curves": {f"{r.impl}:{r.name}": r.curve for r in runs + [run]},
              "sittings": {r.name: r.sittings for r in runs + [run] if r.sittings},
              "figure": str(png)}
    tables = {"test split (finished settings; with --score-unfinished, the figure reached)":
              rows,
              f"{run.name}: sittings so far": [{"setting": run.name, **h} for h in run.sittings],
              f"{run.name}: curve so far (test NLL, k = {CURVE_SAMPLES}, {subset})": [
                  {"train_s": c[0], "epoch": c[1], "nll": c[2]} for c in run.curve]}
    _io.write_results(out, tables=tables, result=result,
                      title="VAE likelihoods on binarized MNIST (unfinished)")
    print(f"unfinished: {unfinished} (epochs so far); resume with the same command "
          f"(checkpoints in {args.workdir})", flush=True)
    return result
  for name in (p for p in peers if p not in models and peer_ok):
    train_peer(name, args.epochs or SETTINGS[name]["epochs"])
  runs += earlier
  png = plot_curves(runs, out / "nll_vs_time.png", subset)
  speed = [speed_row(name, {r.impl: r for r in runs if r.name == name})
           for name in dict.fromkeys(r.name for r in runs)]
  speed = [row for row in speed if row is not None]
  result = {"rows": rows, "speed": speed, "curves": {f"{r.impl}:{r.name}": r.curve for r in runs},
            "curve_images": subset,
            "data": "binarized_mnist train 50,000 / valid 10,000 / test 10,000"
                    if not args.smoke else "smoke subset", "budget_minutes": args.budget_minutes,
            "patience": args.patience, "nll_samples": nll_samples,
            "lr_milestones_epochs": list(milestones), "lr_gamma": args.lr_gamma if milestones else None,
            "warmup_epochs": {m: SETTINGS[m]["warmup_epochs"] for m in models},
            "init": args.init, "ema": args.ema, "batch": {m: SETTINGS[m]["batch"] for m in models + peers},
            "lr": {m: SETTINGS[m]["lr"] for m in models + peers},
            "pythae_installed": peer_ok, "figure": str(png),
            "sittings": {r.name: r.sittings for r in runs if r.sittings},
            "earlier": args.earlier or None}
  tables = {"test split": rows}
  if speed:   # only where a setting ran in both implementations
    tables["time to a curve NLL both reach"] = speed
  _io.write_results(out, tables=tables, result=result, title="VAE likelihoods on binarized MNIST")
  return result


if __name__ == "__main__":
  main()
