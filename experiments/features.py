"""Dimensionality reduction and feature learning on MNIST: autoencoders against PCA.

Conv autoencoders (family `ae`, network `subpixel`) with latent sizes 2, 10 and 32 against
PCA with as many components: test reconstruction MSE, and the test accuracy of a linear
probe (logistic regression on standardised features, fitted on the training split) on
the latents, on PCA coefficients and on raw pixels. Sparse autoencoders (top-k and L1,
family `sparse`) report L0, the fraction of variance unexplained and the dead-latent
share. Figures: the 2-D latent coloured by label beside a t-SNE map of the 32-d latent,
and reconstructions.

  python -m experiments.features [--smoke] [--out DIR] [--data mnist_t10k|tfds:mnist]
"""

import time


from ae_jax import figures, fit, results
from ae_jax.applications import features

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


def main(argv=None):
  p = results.parser(NAME, __doc__.splitlines()[0], data="mnist_t10k", epochs=3, batch_size=32)
  p.add_argument("--sparse-epochs", type=int, default=6)
  args = p.parse_args(argv)
  out, train, test = results.setup(args, NAME, smoke=(256, 64))
  settings = {"channels": (32, 64), "widths": (512, 256), "epochs": args.epochs,
              "batch_size": args.batch_size, "sparse_epochs": args.sparse_epochs,
              "sparse_latent": 128}
  latents = LATENTS
  if args.smoke:
    settings.update(channels=(4, 8), widths=(32,), epochs=1, sparse_epochs=1, sparse_latent=16)
    latents = (2,)
  t_start = time.time()
  ytr, yte = train.y, test.y
  recon_rows, probe_rows, codes, recons = [], [], {}, {}
  for size in latents:
    pca = features.PCA(size).fit(train.x)
    trained, seconds = train_ae(train, settings, args.seed, latent_dim=size)
    z_tr, z_te = trained.encode(train.x), trained.encode(test.x)
    recons[size] = (pca.reconstruct(test.x), trained.decode(z_te))
    codes[size] = z_te
    pca_mse, ae_mse = features.mse(test.x, recons[size][0]), features.mse(test.x, recons[size][1])
    recon_rows.append({"latent size": size, "PCA MSE": pca_mse, "AE MSE": ae_mse,
                       "AE / PCA": ae_mse / pca_mse, "issue PCA anchor": PCA_ANCHORS.get(size),
                       "goal": f"<= {MSE_RATIO_GOAL} x PCA",
                       "goal met": bool(ae_mse <= MSE_RATIO_GOAL * pca_mse),
                       "train seconds": round(seconds, 1)})
    probe_rows.append({"features": f"AE-{size}",
                       "accuracy": features.linear_probe(z_tr, ytr, z_te, yte)})
    probe_rows.append({"features": f"PCA-{size}",
                       "accuracy": features.linear_probe(pca.encode(train.x), ytr,
                                                         pca.encode(test.x), yte)})
  probe_rows.append({"features": "raw pixels",
                     "accuracy": features.linear_probe(train.x, ytr, test.x, yte)})
  sparse_rows = []
  for name, kw in SPARSE[:1] if args.smoke else SPARSE:
    trained, seconds = train_ae(
        train, {**settings, "epochs": settings["sparse_epochs"]}, args.seed, family="sparse",
        network="mlp", latent_dim=settings["sparse_latent"], **kw)
    z_tr, z_te = trained.encode(train.x), trained.encode(test.x)
    sparse_rows.append({"model": name, "setting": ", ".join(f"{k}={v}" for k, v in kw.items()),
                        "latents": settings["sparse_latent"],
                        **features.sparse_metrics(z_te, test.x, trained.decode(z_te)),
                        "MSE": features.mse(test.x, trained.decode(z_te)),
                        "probe accuracy": features.linear_probe(z_tr, ytr, z_te, yte),
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
  result = {"data": args.data, "smoke": args.smoke, "settings": settings,
            "reconstruction": recon_rows, "probe": probe_rows, "sparse": sparse_rows,
            "goals": goals, "figures": [figure.name, grid.name],
            "seconds": round(time.time() - t_start, 1)}
  results.write_results(out, result, {"Test reconstruction MSE": recon_rows,
                                      "Linear probe, test accuracy": probe_rows,
                                      "Sparse autoencoders (test split)": sparse_rows,
                                      "Probe goal": goals},
                        title="Dimensionality reduction and feature learning (MNIST)",
                        echo=True)
  return result


if __name__ == "__main__":
  main()
