"""Loading a model that serves the teacher signature (a teacher or a student).

The SavedModel's `serving_default` takes `images`, uint8 [B, H, W, 3] at the
model's input size, and returns one task's raw outputs (see
`teachers/export.py`); `teacher.json` beside it says which task and how.
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


def load(path: str) -> ServedModel:
  """Loads a teacher-signature SavedModel and its `teacher.json`."""
  metadata_path = os.path.join(path, METADATA_FILE)
  if not tf.io.gfile.exists(metadata_path):
    raise FileNotFoundError(f"{metadata_path} does not exist: export the model with "
                            "python -m teachers.export")
  with tf.io.gfile.GFile(metadata_path) as f:
    metadata = json.load(f)
  signature = tf.saved_model.load(path).signatures[SIGNATURE]
  return ServedModel(path, metadata, signature)
