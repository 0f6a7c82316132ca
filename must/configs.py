"""Loading typed configs: defaults, then a strict YAML file, then overrides.

Configs are Model Garden `hyperparams.Config` dataclasses. A key that does not
exist or a value of the wrong type stops with a message that names the key and
where it came from; the result is validated and locked.
"""
import dataclasses
import typing
from typing import Sequence, TypeVar, Union

import yaml

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from official.core import config_definitions as cfg
from official.modeling import hyperparams
from official.modeling import optimization
from official.vision.configs import backbones
from official.vision.configs import common as common_cfg
from official.vision.configs import retinanet as retinanet_cfg

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
         params_override: str | dict | None = None,
         override_name: str = "--params_override") -> ConfigT:
  """Applies a YAML file and overrides to `config`, checks it, and locks it.

  Args:
    config: the defaults (modified in place and returned).
    config_file: path of a YAML file whose keys must all exist in `config`.
    params_override: 'a.b=1,c=x' string, YAML string or dict, applied last.
    override_name: where `params_override` came from, for error messages.

  Returns:
    The validated, locked config.

  Raises:
    ConfigError: an unknown key, a value of the wrong type, or a file that is
      missing or not YAML, naming the key and the file or override.
  """
  for where, override in ((config_file, config_file), (override_name, params_override)):
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


# -- Model Garden config pieces shared by the teacher and student experiments --


@dataclasses.dataclass
class SchemaDataConfig(cfg.DataConfig):
  """Input of a task that reads TFRecords in the MuST schema (`must.schema`).

  Attributes:
    aug_rand_hflip: random left-right flip of the image and every label (training).
    file_type: 'tfrecord' or 'tfrecord_compressed'.
    dtype: dtype of the images fed to the model ('float32', 'bfloat16', ...).
  """
  input_path: Union[Sequence[str], str, hyperparams.Config] = ""
  global_batch_size: int = 0
  is_training: bool = True
  aug_rand_hflip: bool = True
  shuffle_buffer_size: int = 1000
  drop_remainder: bool = True
  file_type: str = "tfrecord"
  dtype: str = "float32"


def small_resnet(model_id: int = 18, depth_multiplier: float = 0.5) -> backbones.Backbone:
  """A narrow ResNet (Model Garden's `depth_multiplier` scales every width)."""
  return backbones.Backbone(
      type="resnet", resnet=backbones.ResNet(model_id=model_id, depth_multiplier=depth_multiplier))


def detection_generator(max_num_detections: int = 50) -> retinanet_cfg.DetectionGenerator:
  """Box decoding + NMS for the detection teacher and the student's detection head.

  Per-class NMS by tf.image.combined_non_max_suppression (`batched`): on CPU
  about 100x faster than Model Garden's default `v2`, with the same detections
  (python -m benchmarks.nms).
  """
  return retinanet_cfg.DetectionGenerator(max_num_detections=max_num_detections,
                                          nms_version="batched")


def norm_activation() -> common_cfg.NormActivation:
  return common_cfg.NormActivation(norm_momentum=0.9, norm_epsilon=1e-5, use_sync_bn=False)


def trainer(train_steps: int, learning_rate: float, warmup_steps: int = 100,
            steps_per_loop: int = 50) -> cfg.TrainerConfig:
  """Adam with linear warm-up and cosine decay; evaluates over the whole eval split."""
  return cfg.TrainerConfig(
      train_steps=train_steps,
      steps_per_loop=steps_per_loop,
      summary_interval=steps_per_loop,
      checkpoint_interval=steps_per_loop * 4,
      validation_interval=train_steps,
      validation_steps=-1,
      max_to_keep=2,
      optimizer_config=optimization.OptimizationConfig({
          "optimizer": {"type": "adam", "adam": {"global_clipnorm": 10.0}},
          "learning_rate": {"type": "cosine", "cosine": {
              "initial_learning_rate": learning_rate, "decay_steps": train_steps}},
          "warmup": {"type": "linear", "linear": {"warmup_steps": warmup_steps}},
      }))


def initial_learning_rate(trainer_config: cfg.TrainerConfig) -> float:
  """The learning rate a trainer config's schedule starts from (after warm-up)."""
  schedule = trainer_config.optimizer_config.learning_rate
  config = schedule.get()
  for key in ("initial_learning_rate", "learning_rate"):
    if config is not None and hasattr(config, key):
      return float(getattr(config, key))
  if schedule.type == "stepwise":
    return float(config.values[0])
  raise ValueError(f"cannot read the initial learning rate of schedule {schedule.type!r}")


def image_size_override(params: cfg.ExperimentConfig, height: int, width: int) -> dict:
  """Overrides that make an experiment train and evaluate at height x width.

  Sets `task.model.input_size`, and the data configs' `output_size` where the
  experiment's data configs have one (segmentation, depth).
  """
  task = {"model": {"input_size": [height, width, 3]}}
  for data in ("train_data", "validation_data"):
    if hasattr(getattr(params.task, data), "output_size"):
      task[data] = {"output_size": [height, width]}
  return {"task": task}
