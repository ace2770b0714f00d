"""Default config: a small MLP autoencoder on scikit-learn's digits, CPU friendly."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"          # see `ae_jax.data.available()`, a tfds:<name> or a file path
  c.data.split = ""               # source split; "" = the source's default
  c.data.eval_name = ""           # separate evaluation source; "" = hold out val_fraction
  c.data.val_fraction = 0.1
  c.data.scaling = "none"         # none | minmax | standard, fitted on the training split
  c.data.nonfinite = "raise"      # raise | drop | impute
  c.data.labels = True            # keep labels when the source has them

  c.model = ml_collections.ConfigDict()
  c.model.family = "ae"           # ae | sparse | denoising | vae | cvae | vqvae
  c.model.network = "mlp"         # mlp | conv2d | conv1d
  c.model.latent_dim = 16
  c.model.widths = (128, 64)      # MLP hidden widths (encoder; decoder mirrors them)
  c.model.channels = (32, 64)     # conv channels per stride-2 layer
  c.model.kernel_size = 3
  c.model.stride = 2
  c.model.activation = "relu"
  c.model.layer_norm = False
  c.model.dropout = 0.0
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  c.model.recon_loss = "mse"      # mse | mae | bce (AE families); bce | gaussian (VAE)
  c.model.sparsity = "l1"         # sparse family: l1 | kl | topk
  c.model.k = 4                   # top-k active latents
  c.model.learn_sigma = False     # VAE Gaussian likelihood: learn a per-feature sigma
  c.model.num_codes = 64          # VQ-VAE codebook size
  c.model.code_dim = 4            # VQ-VAE code vector size (latent_dim must be a multiple)
  c.model.num_classes = 10        # cvae: number of label classes

  c.objective = ml_collections.ConfigDict()
  c.objective.l1_weight = 1e-3
  c.objective.kl_rho = 0.05
  c.objective.kl_weight = 0.1
  c.objective.noise = "gaussian"  # gaussian | salt_pepper | masking | block
  c.objective.noise_level = 0.2   # sigma for gaussian, a rate for salt_pepper / masking
  c.objective.noise_clip = True
  c.objective.clip_min = 0.0
  c.objective.clip_max = 1.0
  c.objective.block_size = 3
  c.objective.block_region = ml_collections.config_dict.placeholder(int)
  c.objective.beta = 1.0
  c.objective.beta_warmup_steps = 0
  c.objective.iw_samples = 1      # > 1: importance-weighted bound (IWAE)
  c.objective.binarize = False    # VAE families: train on x ~ Bernoulli(x), a fresh draw per step
  c.objective.output_sigma = 1.0  # fixed Gaussian likelihood sigma
  c.objective.commitment = 0.25

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"           # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0         # global-norm clip; 0 = off
  c.optim.schedule = "constant"   # constant | cosine | warmup_cosine
  c.optim.warmup_steps = 0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64         # global batch, split over devices
  c.train.num_steps = 600
  c.train.num_epochs = 0          # > 0 overrides num_steps
  c.train.eval_every = 200
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.patience = 0            # early stopping: evaluations without improvement; 0 = off
  c.train.parallel = "pmap"       # pmap | shard_map | jit
  c.train.num_devices = 0         # 0 = all local devices
  c.train.nonfinite = "raise"     # raise | skip
  c.train.max_skipped_steps = 10
  c.train.figures = True
  c.train.tensorboard = False     # also write TensorBoard event files to workdir/tensorboard
  c.train.tensorboard_images_every = 5  # evaluations between reconstruction/sample images
  return c
