"""Generation: VAE and IWAE on dynamically binarised MNIST, test NLL by importance sampling
next to the ELBO, a reference PyTorch VAE of the same architecture and epochs, samples and
interpolations, fine-tuning from digits 0-4 to 5-9, and classifier data augmentation.

Protocol: 1,000 of the 8,000 training images are held out for validation; every model
trains on the other 7,000. The validation ELBO of each model is reported beside its test
figures; the fine-tuning learning rate (--ft-lr, one run per value) is chosen by the ELBO
on the validation images of 5-9; the architecture and epochs are fixed beforehand (the
issue's anchors' architecture, and the CPU budget). The test images are scored once.

  python -m experiments.generation            # the CPU-sized run (see RESULTS_applications_b.md)
  python -m experiments.generation --epochs 187 --iwae-epochs 120   # the anchors' epochs
  python -m experiments.generation --smoke    # seconds, for CI
"""

import time
import warnings

import numpy as np

from ae_jax import data as data_lib
from ae_jax.applications import generation as generate
from ae_jax.fit import fit
from ae_jax import results as _io
from experiments import _protocol

NAME = "generation"
GOALS = {"VAE": 95.0, "IWAE k=5": 92.0}
ANCHORS = {"VAE": "PyTorch VAE, 187 epochs: 97.82", "IWAE k=5": "PyTorch IWAE, 120 epochs: 93.81"}


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data", default="mnist_t10k",
                 help="a source with 'train' and 'test' splits: mnist_t10k or tfds:mnist")
  p.add_argument("--epochs", type=int, default=5, help="VAE and PyTorch VAE epochs")
  p.add_argument("--iwae-epochs", type=int, default=None, help="IWAE epochs (default --epochs)")
  p.add_argument("--widths", type=int, nargs="+", default=[500, 500],
                 help="hidden widths of the encoder (the decoder mirrors them)")
  p.add_argument("--latent-dim", type=int, default=20)
  p.add_argument("--batch-size", type=int, default=100)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--nll-samples", type=int, default=5000, help="importance samples k")
  p.add_argument("--nll-examples", type=int, default=0,
                 help="test images scored by importance sampling (0: the whole test split, "
                      "as the ELBO)")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--ft-labelled", type=int, default=200, help="images of 5-9 to fine-tune on")
  p.add_argument("--ft-epochs", type=int, default=50)
  p.add_argument("--ft-lr", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                 help="fine-tuning learning rates; the best validation ELBO on 5-9 is kept")
  p.add_argument("--ft-nll-samples", type=int, default=1000)
  p.add_argument("--ft-nll-examples", type=int, default=0,
                 help="test images of each half scored by importance sampling (0: all)")
  p.add_argument("--aug-labelled", type=int, default=100, help="labelled digits (10 per class)")
  p.add_argument("--aug-per-class", type=int, default=100, help="generated extras per class")
  p.add_argument("--aug-seeds", type=int, default=2)
  p.add_argument("--cvae-epochs", type=int, default=200)
  p.add_argument("--clf-max-iter", type=int, default=2000,
                 help="L-BFGS iterations of the logistic regression")
  p.add_argument("--val-size", type=int, default=1000,
                 help="training images held out for validation")
  args = p.parse_args(argv)
  if args.nll_examples < 0 or args.ft_nll_examples < 0:
    p.error("--nll-examples and --ft-nll-examples must be >= 0 (0 scores the whole split)")
  if args.smoke:
    args.epochs, args.iwae_epochs, args.nll_samples, args.nll_examples = 1, 1, 20, 20
    args.ft_labelled, args.ft_epochs, args.ft_nll_samples, args.ft_nll_examples = 50, 2, 20, 20
    args.aug_per_class, args.aug_seeds, args.cvae_epochs = 5, 1, 2
    args.widths, args.clf_max_iter, args.ft_lr, args.val_size = [32], 50, [3e-4, 1e-3], 100
  args.iwae_epochs = args.epochs if args.iwae_epochs is None else args.iwae_epochs
  return args


def load_splits(args):
  """(train, validation, test): the validation images are carved from the training split."""
  train, test = data_lib.load(args.data, "train"), data_lib.load(args.data, "test")
  if args.smoke:
    train, test = train.take(np.arange(700)), test.take(np.arange(200))
  train, val = _protocol.carve_validation(train, args.val_size)
  return train, val, test


def vae_config(args, **overrides):
  kw = dict(widths=tuple(args.widths), latent_dim=args.latent_dim, batch_size=args.batch_size,
            learning_rate=args.lr, seed=args.seed)
  return generate.vae_config(**{**kw, **overrides})


def _count(requested: int, available: int) -> int:
  """How many test images to score: all of them for 0, else at most `requested`."""
  return available if requested <= 0 else min(requested, available)


def train_models(args, train, val_bin, test_bin):
  """Trains VAE, IWAE and the PyTorch VAE; scores each on the binarised test images."""
  n_nll = _count(args.nll_examples, len(test_bin))
  specs = [("VAE", "JAX/Flax", 1, args.epochs), ("IWAE k=5", "JAX/Flax", 5, args.iwae_epochs)]
  if not args.no_torch and generate.torch_available():
    specs.append(("VAE (PyTorch reference)", "PyTorch", 1, args.epochs))
  elif not args.no_torch:
    print("note: torch is not installed (pip install 'ae_jax[compare]'); "
          "skipping the PyTorch reference VAE")
  models, rows = {}, []
  for name, framework, k, epochs in specs:
    cfg = vae_config(args, iw_samples=k, epochs=epochs)
    t0 = time.time()
    if framework == "PyTorch":
      net, _ = generate.train_torch_vae(train.x, epochs=epochs, batch_size=args.batch_size,
                                        learning_rate=args.lr, seed=args.seed,
                                        widths=tuple(args.widths), latent_dim=args.latent_dim)
      trained = generate.torch_to_trained(net, cfg, train.x.shape[1:])
    else:
      trained = fit(cfg, train_data=train, progress=False)
    train_s = time.time() - t0
    t0 = time.time()
    train_bin = generate.binarize_fixed(train.x[:len(test_bin)], args.seed + 1)
    both = generate.estimate_elbo(trained, np.concatenate([test_bin, train_bin, val_bin]),
                                  seed=args.seed)["elbo"]
    n_test, n_train = len(test_bin), len(train_bin)
    elbo, train_elbo = both[:n_test], both[n_test:n_test + n_train]
    val_elbo = both[n_test + n_train:]
    nll = generate.estimate_nll(trained, test_bin[:n_nll], num_samples=args.nll_samples,
                                seed=args.seed)
    eval_s = time.time() - t0
    s = generate.nll_summary(nll)
    goal = GOALS.get(name)
    rows.append({
        "model": name, "framework": framework, "epochs": epochs,
        "train ELBO (nats)": float(train_elbo.mean()),
        "validation ELBO (nats)": float(val_elbo.mean()), "test ELBO (nats)": float(elbo.mean()),
        f"test NLL, IS k={args.nll_samples} (nats)": s["mean"], "± s.e.": s["sem"],
        "test -ELBO on the same images": float(-elbo[:n_nll].mean()),
        "goal": f"≤ {goal:g}" if goal else "–",
        "met": (s["mean"] <= goal) if goal else None,
        "train s": train_s, "eval s": eval_s})
    models[name] = trained
    print(f"{name}: test NLL {s['mean']:.2f} ± {s['sem']:.2f}, ELBO {elbo.mean():.2f} "
          f"({train_s:.0f}s train, {eval_s:.0f}s eval)", flush=True)
  return models, rows, n_nll


def finetune_study(args, train, val, test):
  """Pretrain on 0-4, fine-tune on a few 5-9 images with the learning rate of the best
  validation ELBO on 5-9; NLL on both test halves before and after."""
  low, high = np.arange(5), np.arange(5, 10)
  train_low = train.filter_labels(low)
  train_high = train.filter_labels(high)
  subset = train_high.take(np.arange(min(args.ft_labelled, len(train_high))))
  n = args.ft_nll_examples or None
  test_low = generate.binarize_fixed(test.filter_labels(low).x[:n], args.seed + 2)
  test_high = generate.binarize_fixed(test.filter_labels(high).x[:n], args.seed + 3)
  val_high = generate.binarize_fixed(val.filter_labels(high).x, args.seed + 4)
  pre = fit(vae_config(args, epochs=args.epochs), train_data=train_low, progress=False)
  val_rows, tuned_models = [], []
  for lr in args.ft_lr:
    model = generate.finetune(pre, subset, epochs=args.ft_epochs, learning_rate=lr,
                              seed=args.seed)
    tuned_models.append(model)
    val_rows.append({"fine-tuning lr": lr, "validation ELBO 5-9 (nats)": float(
        generate.estimate_elbo(model, val_high, seed=args.seed)["elbo"].mean())})
  best = _protocol.select([r["validation ELBO 5-9 (nats)"] for r in val_rows])
  for i, r in enumerate(val_rows):
    r["chosen"] = i == best
  tuned, ft_lr = tuned_models[best], args.ft_lr[best]
  scratch_cfg = vae_config(args, epochs=args.ft_epochs,
                           batch_size=min(args.batch_size, len(subset)))
  scratch = fit(scratch_cfg, train_data=subset, progress=False)
  nll = lambda m, x: generate.nll_summary(generate.estimate_nll(
      m, x, num_samples=args.ft_nll_samples, seed=args.seed))["mean"]
  rows = []
  for name, m, how in [("pretrained on 0-4 (before)", pre, f"{args.epochs} epochs on "
                        f"{len(train_low)} images of 0-4"),
                       ("fine-tuned on 5-9 (after)", tuned, f"+ {args.ft_epochs} epochs on "
                        f"{len(subset)} images of 5-9, lr {ft_lr:g} (chosen on validation)"),
                       ("from scratch on the 5-9 subset", scratch, f"{args.ft_epochs} epochs on "
                        f"{len(subset)} images of 5-9, lr {args.lr:g}")]:
    rows.append({"model": name, "training": how, "test NLL 5-9 (nats)": nll(m, test_high),
                 "test NLL 0-4 (nats)": nll(m, test_low)})
  return rows, val_rows


def _classifier_accuracy(x, y, test, seed, max_iter):
  from sklearn.exceptions import ConvergenceWarning  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  clf = LogisticRegression(max_iter=max_iter, random_state=seed)
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=ConvergenceWarning)  # --smoke stops early
    clf.fit(x.reshape(len(x), -1), y)
  return float(clf.score(test.x.reshape(len(test), -1), test.y))


def labelled_subset(train, per_class: int, seed: int):
  """`per_class` random training images of each label (seeded)."""
  rng = np.random.RandomState(seed)
  idx = np.concatenate([rng.choice(np.flatnonzero(train.y == c), per_class, replace=False)
                        for c in np.unique(train.y)])
  return train.take(idx)


def augmentation_study(args, train, test, vae):
  """Logistic regression on a few labelled digits, with and without generated extras."""
  results = {"none": [], "cvae": [], "perturb": []}
  examples = {}
  per_class = max(1, args.aug_labelled // 10)
  for seed in range(args.aug_seeds):
    lab = labelled_subset(train, per_class, args.seed + seed)
    results["none"].append(_classifier_accuracy(lab.x, lab.y, test, seed, args.clf_max_iter))
    cfg = vae_config(args, family="cvae", epochs=args.cvae_epochs,
                     batch_size=min(50, len(lab)), seed=args.seed + seed)
    cvae = fit(cfg, train_data=lab, progress=False)
    y_gen = np.repeat(np.arange(10), args.aug_per_class).astype(np.int32)
    x_gen = cvae.sample(len(y_gen), seed=seed, cond=y_gen)
    results["cvae"].append(_classifier_accuracy(
        np.concatenate([lab.x, x_gen]), np.concatenate([lab.y, y_gen]), test, seed,
        args.clf_max_iter))
    copies = max(1, args.aug_per_class // per_class)
    x_per = generate.perturb_latents(vae, lab.x, copies, seed=seed)
    y_per = np.repeat(lab.y, copies)
    results["perturb"].append(_classifier_accuracy(
        np.concatenate([lab.x, x_per]), np.concatenate([lab.y, y_per]), test, seed,
        args.clf_max_iter))
    if seed == 0:
      examples = {"labelled": lab.x, "cvae": x_gen, "perturb": x_per, "copies": copies}
    print(f"augmentation seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}"
                                                    for k, v in results.items()), flush=True)
  n_extra = 10 * args.aug_per_class
  labels = {"none": f"{per_class * 10} labelled digits only",
            "cvae": f"+ {n_extra} CVAE samples (CVAE trained on the labelled digits only, "
                    f"{args.cvae_epochs} epochs)",
            "perturb": f"+ {per_class * 10 * examples['copies']} latent perturbations of the "
                       "labelled digits (VAE trained on the unlabelled training images)"}
  rows = [{"training data": labels[k], "test accuracy (mean)": float(np.mean(v)),
           "std over seeds": float(np.std(v)), "seeds": len(v)} for k, v in results.items()]
  return rows, results, examples


def tile(images, cols: int) -> np.ndarray:
  """Images (N, H, W[, 1]) as one (rows*H, cols*W) mosaic, blank-padded."""
  images = np.asarray(images).reshape(len(images), *np.asarray(images).shape[1:3])
  rows = -(-len(images) // cols)
  h, w = images.shape[1:]
  out = np.ones((rows * h, cols * w), np.float32)
  for i, im in enumerate(images):
    r, c = divmod(i, cols)
    out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
  return out


def draw_figures(out, models, test, examples, seed):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if models:
    _model_figures(out, models, test, seed, plt)
  if examples:
    _augmentation_figure(out, examples, plt)


def _model_figures(out, models, test, seed, plt):
  names = list(models)
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.6))
  for ax, name in zip(np.atleast_1d(axes), names):
    ax.imshow(tile(models[name].sample(64, seed=seed), 8), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{name}: samples (pixel means)")
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(out / "samples.png", dpi=110)
  plt.close(fig)

  vae = models["VAE"]
  rng = np.random.RandomState(seed)
  pairs = []
  for _ in range(5):
    a, b = rng.choice(len(test), 2, replace=False)
    while test.y[a] == test.y[b]:
      b = rng.randint(len(test))
    pairs.append((a, b))
  steps = 10
  rows = [np.concatenate([test.x[a][None], generate.interpolate(vae, test.x[a], test.x[b], steps),
                          test.x[b][None]]) for a, b in pairs]
  fig, ax = plt.subplots(figsize=(1.0 * (steps + 2), 1.05 * len(rows) + 0.6))
  ax.imshow(tile(np.concatenate(rows), steps + 2), cmap="gray", vmin=0, vmax=1)
  ax.set_title("VAE latent interpolation between two test digits "
               "(first and last column: the test images)")
  ax.axis("off")
  fig.tight_layout()
  fig.savefig(out / "interpolation.png", dpi=110)
  plt.close(fig)


def _augmentation_figure(out, examples, plt):
  fig, axes = plt.subplots(1, 3, figsize=(13, 4.8))
  copies, shape = examples["copies"], examples["labelled"].shape[1:3]
  cvae = examples["cvae"].reshape(10, -1, *shape)[:, :10]
  per_class = len(examples["labelled"]) // 10
  perturb = examples["perturb"].reshape(-1, copies, *shape)[::per_class, :10]
  panels = [("the labelled digits", examples["labelled"], per_class),
            ("CVAE samples (one class per row)", cvae.reshape(-1, *shape), cvae.shape[1]),
            (f"latent perturbations ({copies} of one digit per class)",
             perturb.reshape(-1, *shape), perturb.shape[1])]
  for ax, (title, ims, cols) in zip(axes, panels):
    ax.imshow(tile(ims[:100], cols), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(out / "augmentation.png", dpi=110)
  plt.close(fig)


def protocol_record(args, train, val, test, wall_seconds) -> dict:
  return _protocol.protocol(
      f"{args.data}, binarised (dynamic Bernoulli draws in training, one fixed draw for "
      "validation and test)",
      _protocol.carved_splits(len(train), len(val), len(test),
                              test_note=f"scored once (IS NLL on the first "
                                        f"{_count(args.nll_examples, len(test))}, ELBO on all)"),
      tuned=[f"fine-tuning learning rate among {args.ft_lr}: validation ELBO of the "
             "validation images of 5-9"],
      untuned=[f"architecture 784-{'-'.join(map(str, args.widths))}-{args.latent_dim}, "
               f"Adam {args.lr:g}, batch {args.batch_size} (the anchors' set-up)",
               f"epochs: VAE {args.epochs}, IWAE {args.iwae_epochs}, CVAE {args.cvae_epochs}, "
               f"fine-tuning {args.ft_epochs} (the CPU budget, not tuned)",
               "augmentation: logistic regression with default C, "
               f"{args.clf_max_iter} L-BFGS iterations"],
      budget={"epochs": {"VAE": args.epochs, "IWAE": args.iwae_epochs,
                         "fine-tuning": args.ft_epochs, "CVAE": args.cvae_epochs},
              "wall_seconds": round(wall_seconds, 1)})


def main(argv=None):
  """Runs the sections in order, rewriting result.json and table.md after each one."""
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  t_start = time.time()
  train, val, test = load_splits(args)
  test_bin = generate.binarize_fixed(test.x, args.seed)
  val_bin = generate.binarize_fixed(val.x, args.seed + 5)
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  settings.update(train_examples=len(train), validation_examples=len(val),
                  test_examples=len(test),
                  architecture=f"{'-'.join(map(str, [784, *args.widths, args.latent_dim]))} "
                  "(ReLU), Bernoulli decoder, Adam")
  result = {"settings": settings, "anchors": ANCHORS, "timings_s": {}}
  tables = {"Protocol": []}

  def save(section, t0):
    result["timings_s"][section] = time.time() - t0
    result["timings_s"]["total"] = time.time() - t_start
    result["timings_s"]["total_cpu"] = time.process_time()
    result["protocol"] = protocol_record(args, train, val, test, result["timings_s"]["total"])
    tables["Protocol"] = _protocol.rows(result["protocol"])
    _io.write_results(out, result, tables, title="Generation")

  t0 = time.time()
  models, result["nll"], n_nll = train_models(args, train, val_bin, test_bin)
  settings["nll_examples"] = n_nll
  tables[f"Test NLL on binarised {args.data} (IS k={args.nll_samples} on the first {n_nll} "
         f"test images; ELBO on all {len(test)})"] = result["nll"]
  draw_figures(out, models, test, {}, args.seed)
  save("models", t0)

  t0 = time.time()
  result["finetune"], result["finetune_validation"] = finetune_study(args, train, val, test)
  tables["Fine-tuning learning rate, validation ELBO on 5-9"] = result["finetune_validation"]
  tables[f"Fine-tuning 0-4 → 5-9 (IS k={args.ft_nll_samples}, "
         f"{args.ft_nll_examples or 'all'} test images of each half)"] = result["finetune"]
  save("finetune", t0)

  t0 = time.time()
  result["augmentation"], result["augmentation_accuracies"], examples = augmentation_study(
      args, train, test, models["VAE"])
  tables["Data augmentation: logistic regression on pixels, test accuracy"] = (
      result["augmentation"])
  draw_figures(out, {}, test, examples, args.seed)
  save("augmentation", t0)
  print((out / "table.md").read_text())
  print(f"total {result['timings_s']['total']:.0f}s wall, "
        f"{result['timings_s']['total_cpu']:.0f}s CPU; wrote {out}")
  return result


if __name__ == "__main__":
  main()
