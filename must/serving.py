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


@dataclasses.dataclass
class ServedModel:
  """A loaded teacher: its metadata and a NumPy-in, NumPy-out predict."""
  path: str
  metadata: dict[str, Any]
  signature: Any

  @property
  def task(self) -> str:
    return self.metadata["task"]

  @property
  def input_size(self) -> tuple[int, int]:
    return tuple(self.metadata["input_size"])

  @property
  def name(self) -> str:
    return f"{self.metadata.get('experiment', self.task)}@{self.metadata.get('version', '')}"

  def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] at the input size -> the task's raw outputs."""
    if tuple(images.shape[1:3]) != self.input_size:
      raise ValueError(f"{self.path} takes {self.input_size} images, got {images.shape[1:3]}")
    outputs = self.signature(images=tf.constant(images, tf.uint8))
    return {key: value.numpy() for key, value in outputs.items()}


def task_metadata(metadata: dict[str, Any], task: str | None = None,
                  where: str = "") -> dict[str, Any]:
  """One task's metadata from a teacher's or a multi-task model's `teacher.json`.

  Args:
    metadata: the parsed `teacher.json`.
    task: the task to serve; may be None for a single-task teacher.
    where: the model's path, named in errors.

  Returns:
    The metadata with `task` set (and that task's entries of a multi-task model).
  """
  if "tasks" not in metadata:
    return metadata
  served = metadata["tasks"]
  if task is None and len(served) == 1:
    task = next(iter(served))
  if task not in served:
    raise ValueError(f"{where} is a multi-task model serving {sorted(served)}; "
                     f"name one of them, not {task!r}")
  common = {k: v for k, v in metadata.items() if k != "tasks"}
  return {**common, **served[task], "task": task}


def read_metadata(path: str) -> dict[str, Any]:
  """The `teacher.json` beside a SavedModel, as written."""
  metadata_path = os.path.join(path, METADATA_FILE)
  if not tf.io.gfile.exists(metadata_path):
    raise FileNotFoundError(f"{metadata_path} does not exist: export the model with "
                            "python -m teachers.export (or must.student.export)")
  with tf.io.gfile.GFile(metadata_path) as f:
    return json.load(f)


def load(path: str, task: str | None = None) -> ServedModel:
  """Loads a teacher-signature SavedModel (one task of a multi-task one) and its metadata."""
  raw = read_metadata(path)
  metadata = task_metadata(raw, task, where=path)
  signature_name = metadata["task"] if "tasks" in raw else SIGNATURE
  signature = tf.saved_model.load(path).signatures[signature_name]
  return ServedModel(path, metadata, signature)


def load_all(path: str) -> list[ServedModel]:
  """Every task a SavedModel serves: one for a teacher, one per task for a student."""
  raw = read_metadata(path)
  return [load(path, task) for task in raw.get("tasks", [None])]
