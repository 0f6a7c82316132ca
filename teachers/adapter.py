"""Any image model as a teacher: a Keras model or SavedModel plus an adapter config.

  python -m teachers.export --adapter_config my_classifier.yaml --export_dir out/teachers/mine

The config (YAML, strict: an unknown key stops, naming it) says what the model
takes and what its outputs mean; the export wraps it in the teacher contract
(`must.serving`: encoded images of any size in, labels in each image's frame
out) and writes `teacher.json`:

  task: classification          # a `must.tasks` name
  num_classes: 10
  class_names: [cat, dog, ...]  # default class_0..class_{n-1}
  model: path/to/model.keras    # tf_keras .keras / .h5, or a SavedModel dir
  signature: serving_default    # a SavedModel's signature
  input:
    key: ''                     # the image input ('' for the only one)
    size: [224, 224]            # (h, w) the model takes
    size_policy: resize         # pad | resize | center_crop (must.serving)
    dtype: float32              # uint8 (raw pixels) or float32
    range: [0.0, 1.0]           # float32: pixels 0..255 map to this range,
    mean: []                    #   then (x - mean) / stddev per channel
    stddev: []
  outputs:                      # the task's adapter options, e.g.
    kind: logits                #   classification: key, kind logits|probs
                                #   detection: boxes, scores, classes,
                                #   num_detections, box_format yxyx|xyxy|xywh,
                                #   box_units normalized|pixels, class_offset
                                #   segmentation: key, kind logits|probs
                                #   depth: key, kind metric|relative|inverse|
                                #   relative_inverse
  version: v1

The export runs the wrapped model once on two probe images of different sizes
and stops, naming the mismatch, when its outputs do not fit the task.
"""
import dataclasses
import os
import tempfile
from typing import List, Optional

import tensorflow as tf

from must import configs
from must import serving
from must import tasks as tasks_lib
import tf_keras
from official.modeling import hyperparams

INPUT_DTYPES = ("uint8", "float32")
KERAS_SUFFIXES = (".keras", ".h5")


@dataclasses.dataclass
class InputConfig(hyperparams.Config):
  """What the model's image input takes (module docstring)."""
  key: str = ""
  size: List[int] = dataclasses.field(default_factory=list)
  size_policy: str = ""
  dtype: str = "float32"
  range: List[float] = dataclasses.field(default_factory=lambda: [0.0, 1.0])
  mean: List[float] = dataclasses.field(default_factory=list)
  stddev: List[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class AdapterConfig(hyperparams.Config):
  """A foreign model as a teacher (module docstring; `outputs` is typed apart,
  by the task)."""
  task: str = ""
  num_classes: Optional[int] = None
  class_names: Optional[List[str]] = None
  model: str = ""
  signature: str = serving.SIGNATURE
  input: InputConfig = dataclasses.field(default_factory=InputConfig)
  version: str = "v1"
  experiment: str = ""
  train_batch_size: Optional[int] = None
  train_learning_rate: Optional[float] = None


def _check(config: AdapterConfig) -> None:
  if config.task not in tasks_lib.names():
    raise ValueError(f"task {config.task!r}; valid: {tasks_lib.names()}")
  if not config.model:
    raise ValueError("model: give the path of a .keras/.h5 file or a SavedModel dir")
  if len(config.input.size) != 2 or min(config.input.size) < 1:
    raise ValueError(f"input.size must be [height, width], got {config.input.size}")
  if config.input.dtype not in INPUT_DTYPES:
    raise ValueError(f"input.dtype {config.input.dtype!r}; valid: {INPUT_DTYPES}")
  if len(config.input.range) != 2:
    raise ValueError(f"input.range must be [low, high], got {config.input.range}")
  for name in ("mean", "stddev"):
    if len(getattr(config.input, name)) not in (0, 1, 3):
      raise ValueError(f"input.{name} takes 0, 1 or 3 values, got {getattr(config.input, name)}")
  if tasks_lib.get(config.task).has_classes and not config.num_classes:
    raise ValueError(f"num_classes: {config.task} teachers declare their classes")


def load_config(path: str):
  """(the adapter config, its `outputs` typed by the task's `adapter_outputs`) of
  YAML file `path`, checked; errors name the file and key."""
  raw = configs.read_yaml(path)
  outputs = raw.pop("outputs", None) or {}
  config = configs.load(AdapterConfig(), params_override=raw, override_name=path)
  try:
    _check(config)
    task = serving.build_task(config.task, config.num_classes)
    if task.adapter_outputs is None:
      raise ValueError(f"the {config.task} task has no adapter (Task.adapter_outputs)")
  except ValueError as e:
    raise configs.ConfigError(f"{path}: {e}") from None
  options = configs.load(task.adapter_outputs(), params_override=outputs,
                         override_name=f"{path} outputs")
  return config, options


def _local_copy(path: str) -> str:
  """A Keras file on any tf.io.gfile path, as a local file Keras can open."""
  if os.path.exists(path):
    return path
  local = os.path.join(tempfile.mkdtemp(prefix="must-adapter-"), os.path.basename(path))
  tf.io.gfile.copy(path, local)
  return local


def _load_model(config: AdapterConfig, where: str):
  """(trackable holding the weights, fn: model input -> dict of outputs)."""
  path = config.model
  if path.endswith(KERAS_SUFFIXES):
    model = tf_keras.models.load_model(_local_copy(path), compile=False)

    def call_keras(inputs):
      outputs = model(inputs, training=False)
      if isinstance(outputs, dict):
        return outputs
      if isinstance(outputs, (list, tuple)):
        return dict(zip(model.output_names, outputs))
      return {model.output_names[0]: outputs}
    return model, call_keras
  if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    raise FileNotFoundError(f"{where}: model {path} is neither a .keras/.h5 file nor a "
                            "SavedModel dir (no saved_model.pb)")
  loaded = tf.saved_model.load(path)
  if config.signature not in loaded.signatures:
    raise ValueError(f"{where}: {path} has signatures {sorted(loaded.signatures)}, "
                     f"not {config.signature!r}")
  signature = loaded.signatures[config.signature]
  inputs = signature.structured_input_signature[1]
  key = config.input.key or (next(iter(inputs)) if len(inputs) == 1 else "")
  if key not in inputs:
    raise ValueError(f"{where}: signature {config.signature!r} takes {sorted(inputs)}; "
                     "set input.key to the image input")
  return loaded, lambda images: signature(**{key: images})


def model_input(images: tf.Tensor, input_config: InputConfig) -> tf.Tensor:
  """uint8 [B, h, w, 3] -> what the model takes, by `input_config`."""
  if input_config.dtype == "uint8":
    return images
  low, high = input_config.range
  values = tf.cast(images, tf.float32) * ((high - low) / 255.0) + low
  if input_config.mean:
    values -= tf.constant(input_config.mean, tf.float32)
  if input_config.stddev:
    values /= tf.constant(input_config.stddev, tf.float32)
  return values


def export_adapted(config_path: str, export_dir: str) -> dict:
  """Wraps the model of the adapter config at `config_path` as a teacher; returns
  its metadata."""
  config, options = load_config(config_path)
  task = serving.build_task(config.task, config.num_classes)
  size_policy = config.input.size_policy or task.size_policies[0]
  trackable, call = _load_model(config, config_path)
  input_size = list(config.input.size)

  def model_fn(images):
    return task.adapt_outputs(call(model_input(images, config.input)), options, input_size)

  serving.TeacherModule(task, model_fn, input_size, size_policy, trackable).save(
      export_dir, where=f"{config.model} (adapted by {config_path})")
  metadata = serving.TeacherMetadata(
      task=config.task, num_classes=config.num_classes,
      class_names=(list(config.class_names) if config.class_names else
                   [f"class_{i}" for i in range(config.num_classes)] if config.num_classes
                   else None),
      input_size=input_size, size_policy=size_policy, version=config.version,
      experiment=config.experiment or os.path.basename(config.model.rstrip("/")),
      train_batch_size=config.train_batch_size,
      train_learning_rate=config.train_learning_rate, source=config.model)
  metadata.write(export_dir)
  return dataclasses.asdict(metadata)
