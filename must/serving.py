"""Loading a model that serves the teacher signature (a teacher or a student).

The SavedModel's `serving_default` takes `images`, uint8 [B, H, W, 3] at the
model's input size, and returns one task's raw outputs (see
`teachers/export.py`); `teacher.json` beside it says which task and how.

A multi-task model (the student, `must/student/export.py`) has one such
signature per task, named after the task, and its `teacher.json` lists them
under `tasks`; `load(path, task)` serves one of them like a teacher.
"""
import dataclasses
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf

METADATA_FILE = "teacher.json"
SIGNATURE = "serving_default"
FORMAT_VERSION = 1  # of teacher.json; files written before the field existed are version 1


@dataclasses.dataclass
class TeacherMetadata:
  """`teacher.json`: what an exported model serves and how it was trained.

  A teacher serves one `task` (with `num_classes`, `class_names`); a
  multi-task model serves `tasks`, task -> {num_classes, class_names,
  loss_weight}, one signature each. `version` is the model's (e.g. step2000),
  `format_version` the file's.
  """
  input_size: list[int] = dataclasses.field(default_factory=list)
  experiment: str = ""
  version: str = ""
  task: str | None = None
  num_classes: int | None = None
  class_names: list[str] | None = None
  tasks: dict[str, dict[str, Any]] | None = None
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


@dataclasses.dataclass
class ServedModel:
  """A loaded teacher: its metadata and a NumPy-in, NumPy-out predict."""
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

  def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] at the input size -> the task's raw outputs."""
    if tuple(images.shape[1:3]) != self.input_size:
      raise ValueError(f"{self.path} takes {self.input_size} images, got {images.shape[1:3]}")
    outputs = self.signature(images=tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def load(path: str, task: str | None = None) -> ServedModel:
  """Loads a teacher-signature SavedModel (one task of a multi-task one) and its metadata."""
  raw = TeacherMetadata.read(path)
  metadata = raw.for_task(task, where=path)
  signature_name = metadata.task if raw.tasks is not None else SIGNATURE
  signature = tf.saved_model.load(path).signatures[signature_name]
  return ServedModel(path, metadata, signature)


def load_all(path: str) -> list[ServedModel]:
  """Every task a SavedModel serves: one for a teacher, one per task for a student."""
  raw = TeacherMetadata.read(path)
  return [load(path, task) for task in (raw.tasks or [None])]
