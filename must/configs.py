"""Loading typed configs: defaults, then a strict YAML file, then overrides.

Configs are Model Garden `hyperparams.Config` dataclasses. A key that does not
exist or a value of the wrong type stops with a message that names the key and
where it came from; the result is validated and locked.
"""
import dataclasses
import typing
from typing import TypeVar

import yaml

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from official.modeling import hyperparams

ConfigT = TypeVar("ConfigT", bound=hyperparams.Config)


class ConfigError(ValueError):
  """A config that cannot be used: says what is wrong and where."""


def _check_types(config: hyperparams.Config, where: str, prefix: str = "") -> None:
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    key = f"{prefix}{field.name}"
    if isinstance(value, hyperparams.Config):
      _check_types(value, where, key + ".")
      continue
    expected = hints.get(field.name)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      setattr(config, field.name, float(value))
    elif expected in (int, float, str, bool) and not isinstance(value, expected):
      raise ConfigError(f"{where}: {key} must be {expected.__name__}, "
                        f"got {value!r} ({type(value).__name__})")


def load(config: ConfigT, config_file: str | None = None,
         params_override: str | dict | None = None) -> ConfigT:
  """Applies a YAML file and overrides to `config`, checks it, and locks it.

  Args:
    config: the defaults (modified in place and returned).
    config_file: path of a YAML file whose keys must all exist in `config`.
    params_override: 'a.b=1,c=x' string, YAML string or dict, applied last.

  Returns:
    The validated, locked config.

  Raises:
    ConfigError: an unknown key, a value of the wrong type, or a file that is
      missing or not YAML, naming the key and the file or override.
  """
  for where, override in ((config_file, config_file), ("--params_override", params_override)):
    if not override:
      continue
    if override is config_file:
      try:
        with open(config_file) as f:
          override = yaml.safe_load(f) or {}
      except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{config_file}: cannot read the config: {e}") from None
    try:
      config = hyperparams.override_params_dict(config, override, is_strict=True)
    except (KeyError, ValueError, AttributeError, TypeError) as e:
      message = e.args[0] if e.args else e
      raise ConfigError(f"{where}: {message}") from None
    _check_types(config, where)
  try:
    config.validate()
  except (KeyError, ValueError) as e:
    raise ConfigError(f"invalid config: {e}") from None
  config.lock()
  return config
