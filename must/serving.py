"""The teacher contract: the serving signature every teacher (and student) has.

A teacher is a SavedModel whose `serving_default` takes `encoded`, string [B]:
each element one image's JPEG, PNG, GIF, BMP or WebP bytes, of any size. In the
graph, each image is decoded and fitted to the model's input size by its
`size_policy`, as Model Garden's serving modules do:

  pad          keep the aspect ratio, resize to fit, pad bottom and right
               (`preprocess_ops.resize_and_crop_image`; detection, segmentation,
               depth)
  resize       resize to the input size, aspect ratio not kept (classification)
  center_crop  Model Garden's classification crop (0.875 of the short side,
               centred), then resize; for outputs without a pixel frame

It returns one task's outputs in each input image's own frame
(`Task.to_image_frame`): normalized boxes of the image, dense maps that span the
image at the model's resolution (so memory does not grow with the image), and
per-pixel class and confidence rather than probabilities. `Task.served_outputs`
lists each task's keys and ranks.

`teacher.json` beside the SavedModel (`TeacherMetadata`, this file's
`FORMAT_VERSION`) says which task, classes, input size and size policy. A
multi-task model (the student, `must/student/export.py`) has one such
signature per task, named after the task, and lists them under `tasks`;
`load(path, task)` serves one of them like a teacher. `load` checks the
signature against the contract and names any mismatch.
"""
import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

from must import image_codec
from must import tasks as tasks_lib
from official.vision.ops import preprocess_ops

METADATA_FILE = "teacher.json"
SIGNATURE = "serving_default"
INPUT = "encoded"  # the signature's one input: string [B], encoded images
# Of teacher.json. 1: uint8 images at the input size in, outputs in the model's
# frame (re-export such models); files written before the field existed are 1.
FORMAT_VERSION = 2
SIZE_POLICIES = ("pad", "resize", "center_crop")


@dataclasses.dataclass
class TeacherMetadata:
  """`teacher.json`: what an exported model serves and how it was trained.

  A teacher serves one `task` (with `num_classes`, `class_names`); a
  multi-task model serves `tasks`, task -> {num_classes, class_names,
  loss_weight}, one signature each. `input_size` and `size_policy` say how
  images are fitted to the model (module docstring). `version` is the model's
  (e.g. step2000), `format_version` the file's.
  """
  input_size: list[int] = dataclasses.field(default_factory=list)
  experiment: str = ""
  version: str = ""
  task: str | None = None
  num_classes: int | None = None
  class_names: list[str] | None = None
  tasks: dict[str, dict[str, Any]] | None = None
  size_policy: str = ""
  train_batch_size: int | None = None
  train_learning_rate: float | None = None
  backbone_checkpoint: str | None = None
  source: str = ""
  format_version: int = FORMAT_VERSION

  @classmethod
  def read(cls, model_dir: str) -> "TeacherMetadata":
    """The `teacher.json` in `model_dir` (any tf.io.gfile path).

    Raises:
      FileNotFoundError: there is none.
      ValueError: another format version, or keys this version does not have.
    """
    path = os.path.join(model_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path} does not exist: export the model with "
                              "python -m teachers.export (or must.student.export)")
    with tf.io.gfile.GFile(path) as f:
      data = json.load(f)
    version = data.get("format_version", 1)
    if version != FORMAT_VERSION:
      raise ValueError(f"{path} has format_version {version}; this reader takes "
                       f"{FORMAT_VERSION}: re-export the model")
    unknown = set(data) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"{path} has keys {sorted(unknown)} that teacher.json version "
                       f"{FORMAT_VERSION} does not have")
    return cls(**data)

  def write(self, model_dir: str) -> None:
    with tf.io.gfile.GFile(os.path.join(model_dir, METADATA_FILE), "w") as f:
      json.dump(dataclasses.asdict(self), f, indent=2)

  def for_task(self, task: str | None = None, where: str = "") -> "TeacherMetadata":
    """One task's metadata: a teacher's own, or `task` of a multi-task model's (None
    for a model of one task); errors name the model's path `where`."""
    if self.tasks is None:
      return self
    if task is None and len(self.tasks) == 1:
      task = next(iter(self.tasks))
    if task not in self.tasks:
      raise ValueError(f"{where} is a multi-task model serving {sorted(self.tasks)}; "
                       f"name one of them, not {task!r}")
    served = self.tasks[task]
    return dataclasses.replace(self, task=task, tasks=None,
                               num_classes=served.get("num_classes"),
                               class_names=served.get("class_names"))


def restore(path: str, **objects) -> None:
  """Reads `objects` (name=trackable, as saved) from the checkpoint at `path`.

  Values of the checkpoint that nothing reads (the optimizer's) are ignored; an
  object it lacks raises a ValueError naming the checkpoint and what is missing.
  """
  try:
    tf.train.Checkpoint(**objects).read(path).expect_partial().assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"checkpoint {path} does not hold the {', '.join(objects)} being "
                     f"restored (a wrong or mismatched checkpoint): {str(e)[:1000]}") from None


def build_task(name: str, num_classes: int | None = None):
  """The `must.tasks` task a model serves (`num_classes` where the task has classes)."""
  task_class = tasks_lib.get(name)
  return task_class(num_classes=num_classes) if task_class.has_classes else task_class()


def fit_image(encoded: tf.Tensor, input_size, size_policy: str
              ) -> tuple[tf.Tensor, tf.Tensor]:
  """One encoded image -> (uint8 [h, w, 3] at the input size, image_info [4, 2]).

  image_info is Model Garden's: rows (original size, input size, scale,
  offset), in (y, x). The image covers the top-left original size * scale of
  the output; the rest is zero padding.
  """
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  original = tf.cast(tf.shape(image)[:2], tf.float32)
  size = tf.constant(list(input_size), tf.float32)
  if size_policy == "pad":
    fitted, info = preprocess_ops.resize_and_crop_image(image, list(input_size), list(input_size))
  elif size_policy in ("resize", "center_crop"):
    cropped = preprocess_ops.center_crop_image(image) if size_policy == "center_crop" else image
    fitted = tf.image.resize(cropped, list(input_size))
    info = tf.stack([original, size, size / original, tf.zeros([2])])
  else:
    raise ValueError(f"unknown size_policy {size_policy!r}; valid: {SIZE_POLICIES}")
  return tf.cast(tf.clip_by_value(tf.round(fitted), 0, 255), tf.uint8), info


def image_frame_serving(task, model_fn, input_size, size_policy: str):
  """The contract's serving function around a model of fixed input size.

  Args:
    task: the `must.tasks` task the model serves.
    model_fn: uint8 [B, h, w, 3] at `input_size` -> the task's outputs in the
      model's frame (dense maps of the input size, boxes normalized to it).
    input_size: (h, w).
    size_policy: one of `task.size_policies`.

  Returns:
    encoded string [B] -> the task's outputs in each image's frame.
  """
  if size_policy not in task.size_policies:
    raise ValueError(f"size_policy {size_policy!r} cannot serve {task.name}; "
                     f"valid: {task.size_policies}")
  input_size = [int(v) for v in input_size[:2]]

  def serve(encoded):
    images, image_info = tf.map_fn(
        lambda e: fit_image(e, input_size, size_policy), encoded,
        fn_output_signature=(tf.TensorSpec([*input_size, 3], tf.uint8),
                             tf.TensorSpec([4, 2], tf.float32)))
    return task.to_image_frame(model_fn(images), image_info, input_size)
  return serve


def signature_spec() -> tf.TensorSpec:
  return tf.TensorSpec([None], tf.string, name=INPUT)


def check_signature(signature, task, where: str) -> None:
  """Raises a ValueError naming how `signature` differs from the contract of
  `task` (a task or its class)."""
  inputs = signature.structured_input_signature[1]
  if set(inputs) != {INPUT} or inputs[INPUT].dtype != tf.string:
    got = {k: v.dtype.name for k, v in inputs.items()}
    raise ValueError(f"{where} takes {got}; the teacher contract is {INPUT!r}: string [B] "
                     "of encoded images (re-export it with this version)")
  outputs = signature.structured_outputs
  for key, rank in task.served_outputs.items():
    if key not in outputs:
      raise ValueError(f"{where} serves {task.name} without output {key!r}; it has "
                       f"{sorted(outputs)}, the contract {sorted(task.served_outputs)}")
    if outputs[key].shape.rank not in (None, rank):
      raise ValueError(f"{where} output {key!r} has rank {outputs[key].shape.rank}, "
                       f"the {task.name} contract rank {rank}")


def probe_images() -> list[bytes]:
  """Two encoded images of different sizes and aspect ratios."""
  rng = np.random.default_rng(0)
  return [image_codec.encode_png(rng.integers(0, 256, shape, dtype=np.uint8))
          for shape in ((37, 53, 3), (64, 29, 3))]


def check_outputs(task, outputs, batch: int, where: str) -> None:
  """Raises a ValueError naming how served `outputs` (NumPy, for `batch` images)
  break `task`'s contract: keys, ranks, batch, `Task.check_served`."""
  for key, rank in task.served_outputs.items():
    if key not in outputs:
      raise ValueError(f"{where} serves {sorted(outputs)}, not {task.name}'s {key!r}")
    shape = np.shape(outputs[key])
    if len(shape) != rank or shape[0] != batch:
      raise ValueError(f"{where} output {key!r} has shape {shape} for {batch} images; "
                       f"the {task.name} contract is rank {rank}, batch first")
  why = task.check_served(outputs)
  if why:
    raise ValueError(f"{where}: {why}")


def probe(serve, task, where: str) -> None:
  """Runs `serve` (encoded string [B] -> outputs) on `probe_images` and checks them."""
  images = probe_images()
  outputs = serve(tf.constant(images))
  check_outputs(task, {key: value.numpy() for key, value in outputs.items()}, len(images), where)


class TeacherModule(tf.Module):
  """A model behind the teacher contract's signature (`must.serving`).

  Args:
    task: the `must.tasks` task it serves.
    model_fn: uint8 [B, h, w, 3] at `input_size` -> outputs in the model's frame.
    input_size: (h, w).
    size_policy: how images are fitted to it.
    trackable: what holds the model's variables (saved with the module).
  """

  def __init__(self, task, model_fn, input_size, size_policy: str, trackable):
    super().__init__()
    self.inner = trackable
    self._task = task
    self.serve = tf.function(
        image_frame_serving(task, model_fn, input_size, size_policy),
        input_signature=[signature_spec()])

  def save(self, export_dir: str, where: str = "the teacher") -> None:
    """Saves it once its outputs on `probe_images` fit the task (errors name
    `where`)."""
    probe(self.serve, self._task, where)
    tf.saved_model.save(self, export_dir, signatures={SIGNATURE: self.serve})


@dataclasses.dataclass
class ServedModel:
  """A loaded teacher: its metadata and a bytes-in, NumPy-out predict."""
  path: str
  metadata: TeacherMetadata
  signature: Any

  @property
  def task(self) -> str:
    return self.metadata.task

  @property
  def input_size(self) -> tuple[int, int]:
    return tuple(self.metadata.input_size)

  @property
  def name(self) -> str:
    return f"{self.metadata.experiment or self.task}@{self.metadata.version}"

  def predict(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
    """Encoded images of any size -> the task's outputs in each image's frame."""
    outputs = self.signature(**{INPUT: tf.constant(list(encoded), tf.string)})
    return {key: value.numpy() for key, value in outputs.items()}


def load(path: str, task: str | None = None) -> ServedModel:
  """Loads a teacher SavedModel (one task of a multi-task one), checked against the contract."""
  raw = TeacherMetadata.read(path)
  metadata = raw.for_task(task, where=path)
  signature_name = metadata.task if raw.tasks is not None else SIGNATURE
  signature = tf.saved_model.load(path).signatures[signature_name]
  try:
    task_class = tasks_lib.get(metadata.task)
  except KeyError as e:
    raise ValueError(f"{path}: teacher.json names {e.args[0]}") from None
  check_signature(signature, task_class, f"{path} ({signature_name})")
  return ServedModel(path, metadata, signature)

def load_all(path: str) -> list[ServedModel]:
  """Every task a SavedModel serves: one for a teacher, one per task for a student."""
  raw = TeacherMetadata.read(path)
  return [load(path, task) for task in (raw.tasks or [None])]
