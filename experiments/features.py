"""Dimensionality reduction and feature learning on MNIST: autoencoders against PCA.

Autoencoders (family `ae`) with latent sizes 2, 10 and 32 against PCA with as many
components: test reconstruction MSE, and the test accuracy of a linear probe (logistic
regression on standardised features) on the latents, on PCA coefficients and on raw
pixels. Sparse autoencoders (top-k and L1, family `sparse`) report L0, the fraction of
variance unexplained and the dead-latent share. Figures: the 2-D latent coloured by label
beside a t-SNE map of the 32-d latent, and reconstructions.

Protocol: 1,000 of the 8,000 training images are held out for validation; models, PCA
and probes are fitted on the other 7,000. For each latent size the network and epochs
(one model per entry of --ae-grid) are chosen by validation MSE, and for each feature set
the probe's inverse regularisation C (--probe-c) by validation accuracy; the test images
are scored once, for the chosen settings only.

  python -m experiments.features [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time


from ae_jax import figures, fit, results
from ae_jax.applications import features
from experiments import _protocol

NAME = "features"
LATENTS = (2, 10, 32)
PCA_ANCHORS = {2: 0.0559, 10: 0.0342, 32: 0.0170}
PROBE_ANCHORS = {"PCA-32": 0.891, "raw pixels": 0.8975}
MSE_RATIO_GOAL, PROBE_GOAL = 0.7, 0.93
SPARSE = (("top-k", {"sparsity": "topk", "k": 16}), ("L1", {"sparsity": "l1", "l1_weight": 1e-4}))


def draw_maps(z2, z32_map, labels, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
  for ax, pts, title in ((axes[0], z2, "2-D latent of the conv autoencoder"),
                         (axes[1], z32_map, "t-SNE of the 32-d latent")):
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
  cbar = fig.colorbar(sc, ax=axes, ticks=range(10), fraction=0.025)
  cbar.set_label("digit")
  fig.suptitle(f"MNIST test digits (n={len(labels)})", fontsize=11)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def train_ae(train, settings, seed, **kw):
  cfg = features.ae_config(channels=settings["channels"], widths=settings["widths"],
                           epochs=settings["epochs"], batch_size=settings["batch_size"], **kw)
  cfg.seed = seed
  return results.timed(fit.fit, cfg, train_data=train, progress=False)


def probe(z_tr, ytr, z_val, yval, z_te, yte, grid) -> dict:
  """Linear probe with C chosen on validation accuracy; the test scored once, with it."""
  val_acc = [features.linear_probe(z_tr, ytr, z_val, yval, c=c) for c in grid]
  c = grid[_protocol.select(val_acc)]
  return {"C (chosen on validation)": c, "validation accuracy": max(val_acc),
          "accuracy": features.linear_probe(z_tr, ytr, z_te, yte, c=c)}


def main(argv=None):
  p = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k", batch_size=32)
  p.add_argument("--ae-grid", nargs="+", default=[("subpixel", 3), ("mlp", 10)],
                 metavar="NETWORK:EPOCHS", type=_protocol.colon_entry("NETWORK:EPOCHS", str, int),
                 help="autoencoder candidates per latent size; the lowest validation MSE wins")
  p.add_argument("--probe-c", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0],
                 help="probe C candidates; the best validation accuracy wins")
  p.add_argument("--sparse-epochs", type=int, default=6)
  p.add_argument("--val-size", type=int, default=1000,
                 help="training images held out for validation")
  args = p.parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(320, 64))
  settings = {"channels": (32, 64), "widths": (512, 256), "ae_grid": args.ae_grid,
              "batch_size": args.batch_size, "sparse_epochs": args.sparse_epochs,
              "sparse_latent": 128, "probe_c": args.probe_c, "val_size": args.val_size}
  latents = LATENTS
  if args.smoke:
    settings.update(channels=(4, 8), widths=(32,), ae_grid=[("subpixel", 1)],
                    sparse_epochs=1, sparse_latent=16, probe_c=[0.1, 1.0], val_size=64)
    latents = (2,)
  train, val = _protocol.carve_validation(train, settings["val_size"])
  grid_c = settings["probe_c"]
  t_start = time.time()
  ytr, yval, yte = train.y, val.y, test.y
  recon_rows, probe_rows, val_rows, codes, recons = [], [], [], {}, {}
  for size in latents:
    pca = features.PCA(size).fit(train.x)
    candidates = []
    for network, epochs in settings["ae_grid"]:
      trained, seconds = train_ae(train, {**settings, "epochs": epochs}, args.seed,
                                  latent_dim=size, network=network)
      val_mse = features.mse(val.x, trained.reconstruct(val.x))
      candidates.append((trained, seconds))
      val_rows.append({"latent size": size, "network": network, "epochs": epochs,
                       "validation MSE": val_mse, "PCA validation MSE":
                       features.mse(val.x, pca.reconstruct(val.x)),
                       "train seconds": round(seconds, 1)})
    rows_here = val_rows[-len(candidates):]
    best = _protocol.select([r["validation MSE"] for r in rows_here], higher=False)
    for i, r in enumerate(rows_here):
      r["chosen"] = i == best
    trained, seconds = candidates[best]
    chosen = f"{rows_here[best]['network']}, {rows_here[best]['epochs']} epochs"
    z_tr, z_val, z_te = trained.encode(train.x), trained.encode(val.x), trained.encode(test.x)
    recons[size] = (pca.reconstruct(test.x), trained.decode(z_te))
    codes[size] = z_te
    pca_mse, ae_mse = features.mse(test.x, recons[size][0]), features.mse(test.x, recons[size][1])
    recon_rows.append({"latent size": size, "AE (chosen on validation)": chosen,
                       "PCA MSE": pca_mse, "AE MSE": ae_mse,
                       "AE / PCA": ae_mse / pca_mse, "issue PCA anchor": PCA_ANCHORS.get(size),
                       "goal": f"<= {MSE_RATIO_GOAL} x PCA",
                       "goal met": bool(ae_mse <= MSE_RATIO_GOAL * pca_mse),
                       "train seconds": round(seconds, 1)})
    probe_rows.append({"features": f"AE-{size}",
                       **probe(z_tr, ytr, z_val, yval, z_te, yte, grid_c)})
    probe_rows.append({"features": f"PCA-{size}",
                       **probe(pca.encode(train.x), ytr, pca.encode(val.x), yval,
                               pca.encode(test.x), yte, grid_c)})
  probe_rows.append({"features": "raw pixels",
                     **probe(train.x, ytr, val.x, yval, test.x, yte, grid_c)})
  sparse_rows = []
  for name, kw in SPARSE[:1] if args.smoke else SPARSE:
    trained, seconds = train_ae(
        train, {**settings, "epochs": settings["sparse_epochs"]}, args.seed, family="sparse",
        network="mlp", latent_dim=settings["sparse_latent"], **kw)
    z_tr, z_val, z_te = trained.encode(train.x), trained.encode(val.x), trained.encode(test.x)
    sp = probe(z_tr, ytr, z_val, yval, z_te, yte, grid_c)
    sparse_rows.append({"model": name, "setting": ", ".join(f"{k}={v}" for k, v in kw.items()),
                        "latents": settings["sparse_latent"],
                        **features.sparse_metrics(z_te, test.x, trained.decode(z_te)),
                        "MSE": features.mse(test.x, trained.decode(z_te)),
                        "probe accuracy": sp["accuracy"],
                        "probe C (chosen on validation)": sp["C (chosen on validation)"],
                        "train seconds": round(seconds, 1)})
  big = max(latents)
  probe_goal = next(r["accuracy"] for r in probe_rows if r["features"] == f"AE-{big}")
  goals = [{"goal": f"linear probe from the {big}-d latent >= {PROBE_GOAL}",
            "issue anchors": "PCA-32 0.891, raw pixels 0.8975", "AE": probe_goal,
            "goal met": bool(probe_goal >= PROBE_GOAL)}]
  tsne = features.tsne(codes[big], seed=args.seed, perplexity=min(30.0, len(yte) / 4))
  figure = draw_maps(codes[min(latents)], tsne, yte, out / "latent_maps.png")
  shown = [test.x[:10]]
  labels = ["original"]
  for size in latents:
    shown += [recons[size][0][:10].reshape(test.x[:10].shape), recons[size][1][:10]]
    labels += [f"PCA-{size}", f"AE-{size}"]
  grid = figures.image_rows(shown, labels, out / "reconstructions.png",
                            title="Test reconstructions: PCA against the conv autoencoder")
  seconds = round(time.time() - t_start, 1)
  record = _protocol.protocol(
      args.data,
      _protocol.carved_splits(len(train), len(val), len(test),
                              train_note="fits the autoencoders, PCA and the probes"),
      tuned=[f"autoencoder network and epochs among "
             f"{[f'{n}:{e}' for n, e in settings['ae_grid']]}: validation MSE, per latent size",
             f"probe C among {grid_c}: validation accuracy, per feature set"],
      untuned=[f"conv channels {settings['channels']}, MLP widths {settings['widths']}, "
               f"batch {settings['batch_size']}, Adam 2e-3 cosine",
               f"sparse models (top-k k=16, L1 1e-4; 128 latents, "
               f"{settings['sparse_epochs']} epochs)"],
      budget={"epochs": "see the validation table", "wall_seconds": seconds})
  result = {"data": args.data, "smoke": args.smoke, "settings": settings,
            "validation": val_rows, "reconstruction": recon_rows, "probe": probe_rows,
            "sparse": sparse_rows, "goals": goals, "protocol": record,
            "figures": [figure.name, grid.name], "seconds": seconds}
  results.write_results(out, result, {"Protocol": _protocol.rows(record),
                                      "Validation MSE of each autoencoder candidate": val_rows,
                                      "Test reconstruction MSE": recon_rows,
                                      "Linear probe, test accuracy": probe_rows,
                                      "Sparse autoencoders (test split)": sparse_rows,
                                      "Probe goal": goals},
                        title="Dimensionality reduction and feature learning (MNIST)",
                        echo=["Validation MSE of each autoencoder candidate",
                              "Test reconstruction MSE", "Linear probe, test accuracy",
                              "Sparse autoencoders (test split)", "Probe goal"])
  return result


if __name__ == "__main__":
  main()
