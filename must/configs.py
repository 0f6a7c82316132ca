"""Loading typed configs: defaults, then strict YAML files, then overrides.

Every config the project reads comes through `load`: the experiments of the
training binaries (`must.training.parse_params`), the params.yaml of a trained
model (`load_saved`), the world, the demo's stage configs and the
pseudo-labeling teachers config. Configs are Model Garden `hyperparams.Config`
dataclasses. A key that does not exist or a value of the wrong type stops with
one message format: where it came from (the file or override), the key, and
what was expected. The result is validated and locked.

Schedules follow `trainer.train_steps` (`derive_schedule`): override only the
steps and the cosine decay and the warm-up follow, unless they are set too.
The project's trainer config (`TrainerConfig`) adds
`gradient_accumulation_steps` to Model Garden's; `effective_batch_size` is
what one optimizer step sees.
"""
import dataclasses
import os
import typing
from typing import Any, Callable, Iterator, Sequence, TypeVar, Union

import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official.modeling import optimization
from official.modeling.hyperparams import params_dict
from official.vision.configs import backbones
from official.vision.configs import common as common_cfg
from official.vision.configs import retinanet as retinanet_cfg

ConfigT = TypeVar("ConfigT", bound=hyperparams.Config)
PARAMS_FILE = "params.yaml"  # the final config Model Garden saves in a model dir
TINY = "_tiny"  # suffix of an experiment's registered tiny variant (`register_tiny`)
_DECAY_STEPS = "trainer.optimizer_config.learning_rate.cosine.decay_steps"
_WARMUP = "trainer.optimizer_config.warmup"


class ConfigError(ValueError):
  """A config that cannot be used: says what is wrong and where."""


def read_yaml(path: str) -> dict:
  """A YAML file (any tf.io.gfile path) as a dict, or a ConfigError naming it."""
  try:
    raw = hyperparams.read_yaml_to_params_dict(path).as_dict()
  except (OSError, tf.errors.OpError, ValueError, TypeError, AttributeError) as e:
    raise ConfigError(f"{path}: cannot read the config: {e}") from None
  return raw


def _as_dict(override: str | dict, where: str) -> dict:
  """An override ('a.b=1,c=x', YAML/JSON string, YAML file path or dict) as a dict."""
  if isinstance(override, dict):
    return override
  try:
    return params_dict.override_params_dict(
        params_dict.ParamsDict(), override, is_strict=False).as_dict()
  except (OSError, tf.errors.OpError, ValueError, TypeError, AttributeError) as e:
    raise ConfigError(f"{where}: cannot read the override: {e}") from None


def _keys(config: hyperparams.Config) -> list[str]:
  return sorted(k for k in config.__dict__ if k not in config.RESERVED_ATTR)


def _check_keys(config: hyperparams.Config, override: dict, where: str, prefix: str = ""):
  """Stops at the first key of `override` that `config` does not have."""
  valid = _keys(config)
  unknown = sorted(set(override) - set(valid))
  if unknown:
    raise ConfigError(f"{where}: unknown keys {[prefix + k for k in unknown]}: "
                      f"{unknown[0]!r} does not exist in {prefix[:-1] or 'the config'}; "
                      f"expected one of {valid}")
  for key, value in override.items():
    current = getattr(config, key)
    typed = config._get_subconfig_type(key)  # pylint: disable=protected-access
    typed = None if typed is hyperparams.Config else typed
    free_form = typed is None and type(current) is hyperparams.Config  # pylint: disable=unidiomatic-typecheck
    if free_form:  # its owner types it (e.g. `must.tasks.heads.typed_options`)
      continue
    if isinstance(value, dict) and (isinstance(current, hyperparams.Config) or typed):
      _check_keys(current if current is not None else typed(), value, where, f"{prefix}{key}.")
    elif isinstance(value, (list, tuple)) and isinstance(current, (list, tuple)) and typed:
      for i, item in enumerate(value):
        if isinstance(item, dict):
          element = current[i] if i < len(current) else typed()
          _check_keys(element, item, where, f"{prefix}{key}[{i}].")


def _extend_free_form(config: hyperparams.Config, override: dict) -> None:
  """Lets the free-form configs `override` reaches take its new keys.

  A strict override refuses a key that a free-form `hyperparams.Config` (one its
  owner types, e.g. a head's `options`) does not have yet; Model Garden
  overrides a list of the same length element by element, so a YAML list of
  heads setting options would stop there. An element given for another `task`
  than the one in its place starts from its type's defaults, so that no value
  of one task's head leaks into another's. `_check_keys` has checked the rest.
  """
  for key, value in override.items():
    current = getattr(config, key, None)
    if type(current) is hyperparams.Config and isinstance(value, dict):  # pylint: disable=unidiomatic-typecheck
      current.override(value, is_strict=False)
    elif isinstance(current, hyperparams.Config) and isinstance(value, dict):
      _extend_free_form(current, value)
    elif isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)) \
        and len(current) == len(value):
      elements = list(current)
      for i, item in enumerate(value):
        if not (isinstance(elements[i], hyperparams.Config) and isinstance(item, dict)):
          continue
        if "task" in item and getattr(elements[i], "task", item["task"]) != item["task"]:
          elements[i] = type(elements[i])()  # another task's element: none of its values
        _extend_free_form(elements[i], item)
      setattr(config, key, elements)


def _check_types(config: hyperparams.Config, where: str, prefix: str = "") -> None:
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    key = f"{prefix}{field.name}"
    if isinstance(value, hyperparams.Config):
      _check_types(value, where, key + ".")
      continue
    if isinstance(value, (list, tuple)):
      for i, item in enumerate(value):
        if isinstance(item, hyperparams.Config):
          _check_types(item, where, f"{key}[{i}].")
      continue
    expected = hints.get(field.name)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
      setattr(config, field.name, float(value))
    elif expected in (int, float, str, bool) and not isinstance(value, expected):
      raise ConfigError(f"{where}: {key} must be {expected.__name__}, "
                        f"got {value!r} ({type(value).__name__})")


def _paths(override: dict, prefix: str = "") -> Iterator[str]:
  """The dotted keys an override sets, nested dicts included."""
  for key, value in override.items():
    yield prefix + key
    if isinstance(value, dict):
      yield from _paths(value, f"{prefix}{key}.")


def derive_schedule(params: cfg.ExperimentConfig, explicit: set[str] = frozenset(),
                    defaults: tuple[int, int] | None = None) -> None:
  """Makes the schedule follow `trainer.train_steps` where it was not set.

  Rules, applied to what no file or override set (`explicit`: the dotted keys
  they set):
    - a cosine learning rate decays over `train_steps` (`decay_steps`);
    - a warm-up keeps its share of the default schedule: with the defaults'
      (train_steps, warmup_steps), warmup_steps = round(warmup * train_steps /
      default train_steps), at least 1 (so 100 of 2,000 steps become 10 of 200).
  """
  trainer = params.trainer
  schedule = trainer.optimizer_config.learning_rate
  if schedule.type == "cosine" and _DECAY_STEPS not in explicit:
    schedule.cosine.decay_steps = trainer.train_steps
  warmup = trainer.optimizer_config.warmup.get()
  warmup_set = any(key.startswith(_WARMUP) for key in explicit)
  if defaults and getattr(warmup, "warmup_steps", None) and not warmup_set:
    default_steps, default_warmup = defaults
    if default_steps and trainer.train_steps != default_steps:
      warmup.warmup_steps = max(1, round(default_warmup * trainer.train_steps / default_steps))


def _schedule_defaults(config) -> tuple[int, int] | None:
  trainer = getattr(config, "trainer", None)
  if not isinstance(trainer, cfg.TrainerConfig):
    return None
  warmup = trainer.optimizer_config.warmup.get()
  return trainer.train_steps, getattr(warmup, "warmup_steps", None) or 0


def load(config: ConfigT, config_file: str | Sequence[str] | None = None,
         params_override: str | dict | None = None,
         override_name: str = "--params_override",
         overrides: Sequence[tuple[str, Any]] = (),
         resolve: Callable[[ConfigT], Any] | None = None) -> ConfigT:
  """Applies YAML files and overrides to `config`, checks it, and locks it.

  Args:
    config: the defaults (modified in place and returned).
    config_file: path(s) of YAML files whose keys must all exist in `config`.
    params_override: 'a.b=1,c=x' string, YAML string or file, or dict, applied
      after the files.
    override_name: where `params_override` came from, for error messages.
    overrides: more (where, override) pairs, applied last.
    resolve: completes the config before it is validated and locked (e.g.
      fills in derived values); its KeyError or ValueError stops like a bad key.

  Returns:
    The validated, locked config. An experiment's schedule follows its
    `train_steps` where the sources leave it unset (`derive_schedule`).

  Raises:
    ConfigError: an unknown key, a value of the wrong type, a file that is
      missing or not YAML, or an invalid config, naming the key and the file
      or override.
  """
  files = [config_file] if isinstance(config_file, str) else list(config_file or [])
  sources = [(path, read_yaml(path)) for path in files]
  if params_override:
    sources.append((override_name, _as_dict(params_override, override_name)))
  sources += [(where, _as_dict(override, where)) for where, override in overrides if override]
  defaults, explicit = _schedule_defaults(config), set()
  for where, override in sources:
    if not isinstance(override, dict):
      raise ConfigError(f"{where}: expected a mapping, got {type(override).__name__}")
    _check_keys(config, override, where)
    _extend_free_form(config, override)
    try:
      config.override(override, is_strict=True)
    except (KeyError, ValueError, AttributeError, TypeError) as e:
      raise ConfigError(f"{where}: {e.args[0] if e.args else e}") from None
    _check_types(config, where)
    explicit.update(_paths(override))
  if defaults:
    derive_schedule(config, explicit, defaults)
  where = ", ".join(name for name, _ in sources) or "defaults"
  try:
    if isinstance(getattr(config, "trainer", None), TrainerConfig):
      config.trainer.check()
    if resolve is not None:
      resolve(config)
    config.validate()
  except (KeyError, ValueError) as e:
    raise ConfigError(f"{where}: invalid config: {e.args[0] if e.args else e}") from None
  config.lock()
  return config


def load_saved(model_dir: str, experiments: Sequence[str]) -> cfg.ExperimentConfig:
  """The experiment config saved as params.yaml in a model or export dir.

  The file's keys decide which experiment it is: the first of `experiments`
  whose config takes every key.
  """
  path = os.path.join(model_dir, PARAMS_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} does not exist: not the model dir of a trained "
                            f"{' or '.join(experiments)} (nor a Model Garden export)")
  saved, errors = read_yaml(path), []
  for name in experiments:
    try:
      return load(exp_factory.get_exp_config(name), params_override=saved, override_name=path)
    except ConfigError as e:
      errors.append(str(e))
  raise ConfigError(f"{path} is not the config of any experiment of {list(experiments)}: "
                    f"{errors[0]}")


_TINY_VARIANTS: set[str] = set()


def tiny(experiment: str) -> str:
  """The name of `experiment`'s tiny variant (`register_tiny`)."""
  return experiment + TINY


def with_tiny(experiments: Sequence[str]) -> list[str]:
  """`experiments` and the tiny variants registered for them."""
  return [*experiments, *(tiny(e) for e in experiments if tiny(e) in _TINY_VARIANTS)]


TINY_BACKBONE = {"type": "resnet", "resnet": {"model_id": 10, "depth_multiplier": 0.25}}


def register_tiny(experiment: str, model: Callable[[cfg.ExperimentConfig], dict] | None = None
                  ) -> str:
  """Registers `<experiment>_tiny`: the experiment with a ResNet-10 at quarter
  width (plus `model(params)`'s overrides of `task.model`) and batches of 4, for
  tests and smoke runs (they set the steps). Returns its name."""

  def factory() -> cfg.ExperimentConfig:
    params = exp_factory.get_exp_config(experiment)
    batch = {"global_batch_size": 4}
    params.override({"task": {
        "model": {"backbone": TINY_BACKBONE, **(model(params) if model else {})},
        "train_data": batch, "validation_data": batch}}, is_strict=True)
    return params

  exp_factory.register_config_factory(tiny(experiment))(factory)
  _TINY_VARIANTS.add(tiny(experiment))
  return tiny(experiment)


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


@dataclasses.dataclass
class TrainerConfig(cfg.TrainerConfig):
  """Model Garden's trainer config plus gradient accumulation.

  Attributes:
    gradient_accumulation_steps: k >= 1. One optimizer step adds up the
      gradients of k micro-batches of `task.train_data.global_batch_size` (what
      a device holds) and applies their mean: the step of one batch k times
      larger (`effective_batch_size`), at the memory of one micro-batch.
      `train_steps`, the schedule, checkpoints and summaries count optimizer
      steps. Batch norm normalizes each micro-batch by its own statistics and
      updates its moving averages once per micro-batch.
  """
  gradient_accumulation_steps: int = 1

  def check(self) -> None:
    """Stops with a ValueError naming the key when a value cannot be used."""
    steps = self.gradient_accumulation_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
      raise ValueError(f"trainer.gradient_accumulation_steps must be an integer >= 1, "
                       f"got {steps!r}")


def accumulation_steps(params: cfg.ExperimentConfig) -> int:
  """k of `trainer.gradient_accumulation_steps` (1 for Model Garden's own trainer config)."""
  return int(getattr(params.trainer, "gradient_accumulation_steps", 1))


def effective_batch_size(params: cfg.ExperimentConfig) -> int:
  """The examples one optimizer step learns from: the training batch times k."""
  return params.task.train_data.global_batch_size * accumulation_steps(params)


def trainer(train_steps: int, learning_rate: float, warmup_steps: int = 100,
            steps_per_loop: int = 50) -> TrainerConfig:
  """Adam with linear warm-up and cosine decay; evaluates over the whole eval split."""
  return TrainerConfig(
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
