"""Teachers behind `RunInference`: our own ModelHandler over `must.serving`.

A teacher is anything with `task`, `input_size` and
`predict(encoded images) -> {name: array [B, ...]}` in each image's frame (the
teacher contract, `must.serving`); `must.serving.load` gives one for an
exported SavedModel (Beam's stock TF handler cannot load these), and tests pass
a loader that gives fakes. `TeachersModelHandler` loads one or more teachers
once per worker process (Beam's shared model cache), hands each teacher the
stored bytes of a batch's images (they are fitted to its input size in its
graph) in chunks of exactly its own batch size (padded, so an image's outputs
do not depend on how Beam batched it) and returns, per element, each task's
outputs for that image. `resize_outputs` maps them to the stored image's size:
outputs whose first two dimensions are the teacher's input size are dense maps
spanning the image and are resized bilinearly (but those a task maps itself,
`Task.outputs_at_teacher_size`); the rest (class distributions, normalized
boxes) carry over as they are.
"""
import dataclasses
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from apache_beam.ml.inference import base as inference_base
import cv2
import numpy as np

from must import serving


class Teacher(Protocol):
  """What the pipeline needs of a teacher (a `must.serving.ServedModel` is one)."""
  task: str
  input_size: tuple[int, int]

  def predict(self, encoded: list[bytes]) -> dict[str, np.ndarray]:
    """Encoded images of any size -> outputs with a batch dimension, in each image's frame."""


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """One teacher of the teachers config: its task, SavedModel path, batch size."""
  task: str
  path: str
  batch_size: int = 8


class LoadedTeachers(dict):
  """Task -> loaded teacher; a dict subclass so Beam's shared cache can hold a
  weak reference to it (plain dicts cannot be weakly referenced)."""

  def predict(self, task: str, encoded: list[bytes]) -> dict[str, np.ndarray]:
    """One teacher's outputs: a method, so that it also runs through the proxy
    Beam hands out for a model shared across processes (`large_model`)."""
    return self[task].predict(encoded)


def _resize_dense(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  array = np.asarray(array, np.float32)
  flat = array.reshape(array.shape[0], array.shape[1], -1)
  out = np.empty((size[0], size[1], flat.shape[2]), np.float32)
  for start in range(0, flat.shape[2], 4):  # OpenCV resizes up to 4 channels at once.
    chunk = np.ascontiguousarray(flat[..., start:start + 4])
    resized = cv2.resize(chunk, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    out[..., start:start + 4] = resized.reshape(size[0], size[1], -1)
  return out.reshape(size[0], size[1], *array.shape[2:])


def resize_outputs(outputs: Mapping[str, np.ndarray], input_size: Sequence[int],
                   image_size: Sequence[int], keep: Sequence[str] = ()
                   ) -> dict[str, np.ndarray]:
  """One image's outputs at the teacher's input size -> at the stored image's size.

  Dense maps (first two dimensions equal to `input_size`) are resized
  bilinearly but those named in `keep` (the task's `outputs_at_teacher_size`);
  everything else is returned unchanged.
  """
  input_size, image_size = tuple(input_size), tuple(int(v) for v in image_size)
  resized = {}
  for key, value in outputs.items():
    value = np.asarray(value)
    dense = value.ndim >= 2 and tuple(value.shape[:2]) == input_size and key not in keep
    resized[key] = _resize_dense(value, image_size) if dense and input_size != image_size else value
  return resized


class TeachersModelHandler(inference_base.ModelHandler):
  """Runs one or more teachers on batches of `decode.Decoded` elements.

  `RunInference(TeachersModelHandler(specs))` turns each element into
  (element, {task: outputs at the teacher's input size}).

  Args:
    specs: the teachers to run, at most one per task.
    loader: (path, task) -> Teacher; `must.serving.load` by default (a
      multi-task model at `path` serves `task`).
    max_batch_size: RunInference's largest batch; defaults to the largest
      teacher batch size. Each teacher still runs in chunks of its own size.
    min_batch_size: RunInference's smallest batch (but a bundle's last);
      defaults to the largest: teachers always run full, padded batches, so
      the small batches Beam's adaptive batching starts with would cost as
      much as full ones.
    large_model: load the teachers once per worker machine, shared by its
      processes (Beam's `share_model_across_processes`), rather than once per
      process: for teachers that fit a GPU or the memory once, not N times.
    model_copies: with it, load exactly this many shared copies per machine
      (e.g. one per GPU); implies `large_model`.
  """

  def __init__(self, specs: Sequence[TeacherSpec],
               loader: Callable[[str, str], Teacher] = serving.load, *,
               max_batch_size: int | None = None, min_batch_size: int | None = None,
               large_model: bool = False, model_copies: int | None = None):
    tasks = [spec.task for spec in specs]
    if not specs or len(set(tasks)) != len(tasks):
      raise ValueError(f"give one teacher per task, at least one; got {tasks}")
    self.specs = tuple(specs)
    self.loader = loader
    max_batch_size = max_batch_size or max(s.batch_size for s in specs)
    if model_copies is not None and model_copies < 1:
      raise ValueError(f"model_copies must be >= 1, got {model_copies}")
    super().__init__(min_batch_size=min_batch_size or max_batch_size,
                     max_batch_size=max_batch_size, large_model=large_model,
                     model_copies=model_copies)

  def load_model(self) -> LoadedTeachers:
    teachers = LoadedTeachers()
    for spec in self.specs:
      teacher = self.loader(spec.path, spec.task)
      if teacher.task != spec.task:
        raise ValueError(f"{spec.path} is a {teacher.task} teacher, configured as {spec.task}")
      teachers[spec.task] = teacher
    return teachers

  def run_inference(self, batch: Sequence[Any], model: LoadedTeachers,
                    inference_args: dict[str, Any] | None = None
                    ) -> Iterable[tuple[Any, dict[str, dict[str, np.ndarray]]]]:
    del inference_args
    per_element = [{} for _ in batch]
    for spec in self.specs:
      for start in range(0, len(batch), spec.batch_size):
        chunk = batch[start:start + spec.batch_size]
        # Always the full batch (the last image repeated): TensorFlow's CPU
        # kernels may round differently for other batch sizes, and records
        # must not depend on how Beam batched.
        encoded = [element.encoded for element in chunk]
        outputs = model.predict(spec.task,
                                encoded + encoded[-1:] * (spec.batch_size - len(chunk)))
        for i in range(len(chunk)):
          per_element[start + i][spec.task] = {k: np.asarray(v[i]) for k, v in outputs.items()}
    return list(zip(batch, per_element))

  def get_num_bytes(self, batch: Sequence[Any]) -> int:
    return sum(e.image.nbytes for e in batch)

  def get_metrics_namespace(self) -> str:
    return "pseudo_label_inference"
