"""A few-step config for smoke tests."""

from ae_jax.configs import default


def get_config():
  c = default.get_config()
  c.model.widths = (32,)
  c.model.latent_dim = 4
  c.train.batch_size = 16
  c.train.num_steps = 20
  c.train.eval_every = 10
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.figures = False
  return c
