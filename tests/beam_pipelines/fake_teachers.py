"""Fake teachers behind the teacher interface, for fast Beam tests.

`write(root)` makes one directory per task with a `teacher.json`, as an export
would; `load(path)` returns a fake of the teacher contract (encoded images of
any size in, outputs in each image's frame out) whose outputs are deterministic
functions of the images, with values chosen to sit on both sides of the
default thresholds:

  classification  softmax over 11 classes, peaked on a class from the image mean
  detection       5 boxes: scores 0.9, 0.6, 0.5, 0.4 and a zero-area box at 0.95
  segmentation    class 1 at 0.9 on the left half, class 2 at 0.4 on the right
  depth           a left-to-right ramp from 1 to 2 plus the image mean / 255
"""
import io
import json
import os

import numpy as np
from PIL import Image

from must import serving

NUM_CLASSES = 11
INPUT_SIZE = (32, 32)
TASKS = ("classification", "detection", "segmentation", "depth")
BOXES = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0],
                  [0.5, 0.5, 0.6, 0.6], [0.3, 0.3, 0.3, 0.7]], np.float32)
SCORES = np.array([0.9, 0.6, 0.5, 0.4, 0.95], np.float32)
CLASSES = np.array([1, 2, 3, 4, 5], np.int32)


def write(root: str, tasks=TASKS, version: str = "v1") -> dict[str, str]:
  """Writes one fake teacher dir per task; returns task -> path."""
  paths = {}
  for task in tasks:
    path = os.path.join(root, task)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "teacher.json"), "w") as f:
      json.dump({"format_version": serving.FORMAT_VERSION,
                 "task": task, "experiment": f"fake_{task}", "version": version,
                 "input_size": list(INPUT_SIZE),
                 "num_classes": None if task == "depth" else NUM_CLASSES}, f)
    paths[task] = path
  return paths


class FakeTeacher:
  """Deterministic outputs of the export signature's shapes."""

  def __init__(self, path: str):
    with open(os.path.join(path, "teacher.json")) as f:
      self.metadata = json.load(f)
    self.task = self.metadata["task"]
    self.input_size = tuple(self.metadata["input_size"])

  def predict(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
    b, (h, w) = len(encoded), self.input_size
    means = np.array([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).mean()
                      for data in encoded], np.float32)
    if self.task == "classification":
      logits = np.zeros((b, NUM_CLASSES), np.float32)
      logits[np.arange(b), 1 + (means.astype(int) % (NUM_CLASSES - 1))] = 3.0
      e = np.exp(logits)
      return {"probs": e / e.sum(-1, keepdims=True)}
    if self.task == "detection":
      return {"boxes": np.repeat(BOXES[None], b, 0), "scores": np.repeat(SCORES[None], b, 0),
              "classes": np.repeat(CLASSES[None], b, 0),
              "num_detections": np.full([b], len(BOXES), np.int32)}
    if self.task == "segmentation":
      classes = np.full((b, h, w), 1, np.int32)
      confidence = np.full((b, h, w), 0.9, np.float32)
      classes[:, :, w // 2:], confidence[:, :, w // 2:] = 2, 0.4
      return {"classes": classes, "confidence": confidence}
    ramp = np.linspace(1.0, 2.0, w, dtype=np.float32)[None, None, :]
    return {"depth": np.broadcast_to(ramp, (b, h, w)) + (means / 255.0)[:, None, None]}


def load(path: str, task: str | None = None) -> FakeTeacher:
  """The loader the pipeline takes in place of `must.serving.load`."""
  del task  # A fake teacher's task comes from its path.
  return FakeTeacher(path)
