"""Helpers shared by several test modules (not a test module itself)."""


def set_fields(cfg, **fields):
  """Set `cfg[section][field] = value` for each `section__field=value`; returns cfg.

  `set_fields(cfg, model__latent_dim=3, objective__rd_lambda=0.1)`: keyword names cannot
  hold the dot of "model.latent_dim", so a double underscore stands for it.
  """
  for key, value in fields.items():
    section, field = key.split("__")
    cfg[section][field] = value
  return cfg
