"""Default config: a small MLP autoencoder on scikit-learn's digits, CPU friendly.

The shared fields are below; each family adds its own fields with their defaults (its
`Family.fields`, in ae_jax/families/<name>.py), so every family's settings exist in
every config and can be overridden from the command line.
"""

import ml_collections

from ae_jax import families


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
  c.model.family = "ae"           # any of ae_jax.families.FAMILIES
  c.model.network = "mlp"         # any of ae_jax.networks.NETWORKS
  c.model.latent_dim = 16
  c.model.widths = (128, 64)      # MLP hidden widths (encoder; decoder mirrors them)
  c.model.channels = (32, 64)     # conv channels per stride-2 layer
  c.model.kernel_size = 3
  c.model.stride = 2
  c.model.activation = "relu"
  c.model.layer_norm = False
  c.model.dropout = 0.0
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (params stay float32)
  c.model.conv_impl = "auto"      # auto (fast path on CPU, XLA on GPU/TPU) | xla | fast
  c.model.conv_batch_chunk = -1   # fast path: examples per chunk; -1 auto (64 on CPU), 0 off
  c.model.batch_chunk = -1        # forward in evaluation/encode/decode in chunks of n examples;
                                  # -1 auto (16 for conv networks on CPU), 0 off
  c.model.recon_loss = "mse"      # mse | mae | bce (AE families); bce | gaussian (VAE)
  c.model.init = "flax"           # flax (LeCun-normal kernels, zero biases) | torch (PyTorch's
                                  # nn.Linear / nn.Conv: both uniform in +-1/sqrt(fan_in))

  c.objective = ml_collections.ConfigDict()
  add_fields(c, families.config_fields())

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"           # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0         # global-norm clip; 0 = off
  c.optim.schedule = "constant"   # constant | cosine | warmup_cosine | multistep
  c.optim.warmup_steps = 0
  c.optim.milestones = ()         # multistep: optimizer steps at which the rate decays
  c.optim.milestone_gamma = 0.1   # multistep: factor applied at each milestone
  c.optim.ema_decay = 0.0         # > 0: evaluate, select and save an exponential moving
                                  # average of the parameters (Polyak averaging), e.g. 0.999

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
  c.train.microbatch = -1         # gradient accumulated over micro-batches of n examples per
                                  # device; -1 auto (16 for conv networks on CPU), 0 off
  c.train.nonfinite = "raise"     # raise | skip
  c.train.max_skipped_steps = 10
  c.train.figures = True
  c.train.tensorboard = False     # also write TensorBoard event files to workdir/tensorboard
  c.train.tensorboard_images_every = 5  # evaluations between reconstruction/sample images
  return c


def add_fields(c: ml_collections.ConfigDict, fields: dict) -> None:
  """Set dotted `fields` ({"model.k": 4}) on `c`; placeholders get a fresh reference each."""
  for key, value in fields.items():
    section, name = key.split(".")
    if isinstance(value, ml_collections.FieldReference):
      value = ml_collections.config_dict.placeholder(value.get_type())
    c[section][name] = value
