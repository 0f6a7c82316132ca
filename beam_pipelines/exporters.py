"""Per-task export of labels: decoding, selection, balancing keys and files.

One exporter per task, registered under the task's name like the tasks of
`must.tasks`; the export and inspection pipelines only go through this
interface. Everything here is NumPy and runs inside Beam DoFns.

  from_decoded      the task's part of `Schema.decode` (as NumPy) -> its label dataclass
  select            minimum score and class subset -> the label to export, or a reason
  balance_key       (class, score) for per-class balancing; None: not balanced
  scored_classes    the (class, score or None) items filters by class or score look at
  files             per-image files, {file name: bytes}
  json_line         one JSON line per image (tasks with `writes_json_lines`)
  coco_annotations  COCO annotations of the image (tasks with `writes_coco`)

Selection per task:

  classification  the top-1 class must be in the subset and its probability
                  >= min_score; balanced by the top-1 class, ranked by it
  detection       boxes under min_score or outside the subset are dropped; an
                  image left without boxes is dropped unless keep_empty;
                  balanced by the class of its best box, ranked by its score
  segmentation    pixels of classes outside the subset become background (0);
                  an image left without a pixel of the subset is dropped;
                  balanced by its most frequent object class, ranked by the
                  fraction of labeled (not ignored) pixels
  depth           always exported, not balanced
"""
import abc
import dataclasses
import json
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from must import image_codec
from must.tasks import classification
from must.tasks import depth
from must.tasks import detection
from must.tasks import segmentation

BELOW_MIN_SCORE = "below_min_score"
CLASS_NOT_SELECTED = "class_not_selected"
NO_BOXES = "no_boxes"


@dataclasses.dataclass(frozen=True)
class Selection:
  """What to export.

  Attributes:
    min_score: the lowest detection score / top-1 class probability kept.
    classes: category ids to keep; None keeps every class.
    keep_empty: keep detection images left without boxes.
  """
  min_score: float = 0.0
  classes: frozenset[int] | None = None
  keep_empty: bool = False


class Exporter(abc.ABC):
  """One task's export formats; subclasses set `task` and override what applies."""

  task: ClassVar[str]
  writes_coco: ClassVar[bool] = False
  writes_json_lines: ClassVar[bool] = False

  @abc.abstractmethod
  def from_decoded(self, decoded: Mapping[str, np.ndarray]) -> Any:
    """The task's part of `Schema.decode` (NumPy values) -> its label dataclass."""

  def select(self, label: Any, selection: Selection) -> tuple[Any | None, str]:
    """(the label to export, '') or (None, the reason it is not exported)."""
    del selection
    return label, ""

  def balance_key(self, label: Any) -> tuple[int, float] | None:
    """(class, score): the class it is balanced under and its rank within it."""
    del label
    return None

  def scored_classes(self, label: Any) -> list[tuple[int, float | None]]:
    """What a filter by class or score looks at: (class, score or None) items."""
    del label
    return []

  def files(self, image_id: str, label: Any) -> dict[str, bytes]:
    """Per-image files of this task: file name -> bytes."""
    del image_id, label
    return {}

  def json_line(self, image_id: str, label: Any, names: Sequence[str],
                top_k: int) -> dict[str, Any]:
    """One JSON-lines record of the image (only called when `writes_json_lines`)."""
    raise ValueError(f"{self.task} has no JSON-lines export (writes_json_lines is False)")

  def coco_annotations(self, label: Any, image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """COCO annotations (without ids) of one image."""
    del label, image_size
    return []


_REGISTRY: dict[str, Exporter] = {}


def register(exporter_class: type[Exporter]) -> type[Exporter]:
  """Class decorator: registers an exporter under its task's name."""
  if exporter_class.task in _REGISTRY:
    raise ValueError(f"exporter of {exporter_class.task!r} is registered twice")
  _REGISTRY[exporter_class.task] = exporter_class()
  return exporter_class


def has(task: str) -> bool:
  return task in _REGISTRY


def get(task: str) -> Exporter:
  """The exporter of `task`; a miss lists the tasks that have one."""
  try:
    return _REGISTRY[task]
  except KeyError:
    raise KeyError(f"no exporter for task {task!r}; tasks with one: {names()}") from None


def names() -> list[str]:
  """Tasks with an exporter, sorted."""
  return sorted(_REGISTRY)


def _in(values: np.ndarray, classes: frozenset[int] | None) -> np.ndarray:
  if classes is None:
    return np.ones(np.shape(values), bool)
  return np.isin(values, sorted(classes))


@register
class ClassificationExporter(Exporter):
  """Soft labels; top-k classes as JSON lines."""

  task = classification.Classification.name
  writes_json_lines = True

  def from_decoded(self, decoded):
    return classification.ClassificationLabel(np.asarray(decoded["probs"], np.float32))

  def select(self, label, selection):
    probs = np.asarray(label.probs)
    if probs.max(initial=0.0) < selection.min_score:
      return None, BELOW_MIN_SCORE
    if not _in(int(np.argmax(probs)), selection.classes):
      return None, CLASS_NOT_SELECTED
    return label, ""

  def balance_key(self, label):
    return int(np.argmax(label.probs)), float(np.max(label.probs))

  def scored_classes(self, label):
    return [self.balance_key(label)]

  def json_line(self, image_id, label, names, top_k):
    probs = np.asarray(label.probs)
    top = [int(i) for i in np.argsort(-probs, kind="stable")[:top_k] if probs[i] > 0]
    return {"id": image_id, "label": int(np.argmax(probs)),
            "top_k": [{"class_id": i, "name": names[i] if i < len(names) else str(i),
                       "prob": float(probs[i])} for i in top]}


@register
class DetectionExporter(Exporter):
  """Boxes; a COCO instances file."""

  task = detection.Detection.name
  writes_coco = True

  def from_decoded(self, decoded):
    return detection.DetectionLabel(
        boxes=np.asarray(decoded["boxes"], np.float32).reshape(-1, 4),
        classes=np.asarray(decoded["classes"], np.int64),
        scores=np.asarray(decoded["scores"], np.float32),
        areas=np.asarray(decoded["areas"], np.float32),
        is_crowd=np.asarray(decoded["is_crowd"], np.int64))

  def select(self, label, selection):
    scores = np.asarray(label.scores)
    good = scores >= selection.min_score
    keep = good & _in(label.classes, selection.classes)
    if not keep.any() and not selection.keep_empty:
      if not len(scores):
        return None, NO_BOXES
      return None, BELOW_MIN_SCORE if not good.any() else CLASS_NOT_SELECTED
    return detection.DetectionLabel(
        boxes=label.boxes[keep], classes=label.classes[keep], scores=scores[keep],
        areas=np.asarray(label.areas)[keep], is_crowd=np.asarray(label.is_crowd)[keep]), ""

  def balance_key(self, label):
    if not len(label.classes):
      return 0, 0.0
    best = int(np.argmax(label.scores))
    return int(label.classes[best]), float(label.scores[best])

  def scored_classes(self, label):
    return [(int(c), float(s)) for c, s in zip(label.classes, label.scores)]

  def coco_annotations(self, label, image_size):
    height, width = image_size
    annotations = []
    for box, cls, score, area, crowd in zip(label.boxes, label.classes, label.scores,
                                            label.areas, label.is_crowd):
      ymin, xmin, ymax, xmax = (float(v) for v in box)
      annotations.append({
          "category_id": int(cls), "score": float(score), "iscrowd": int(crowd),
          "bbox": [xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height],
          "area": float(area)})
    return annotations


@register
class SegmentationExporter(Exporter):
  """Class masks; one 8-bit PNG per image (255 = ignore)."""

  task = segmentation.Segmentation.name

  def from_decoded(self, decoded):
    return segmentation.SegmentationLabel(np.asarray(decoded["mask"], np.uint8))

  def select(self, label, selection):
    if selection.classes is None:
      return label, ""
    mask = np.asarray(label.mask)
    objects = (mask != 0) & (mask != segmentation.IGNORE_LABEL)
    other = objects & ~_in(mask, selection.classes)
    if not (objects & ~other).any():
      return None, CLASS_NOT_SELECTED
    return segmentation.SegmentationLabel(np.where(other, 0, mask).astype(np.uint8)), ""

  def balance_key(self, label):
    mask = np.asarray(label.mask)
    labeled = float(np.mean(mask != segmentation.IGNORE_LABEL))
    objects = mask[(mask != 0) & (mask != segmentation.IGNORE_LABEL)]
    if not objects.size:
      return 0, labeled
    return int(np.argmax(np.bincount(objects))), labeled

  def scored_classes(self, label):
    mask = np.asarray(label.mask)
    return [(int(c), None) for c in np.unique(mask) if c not in (0, segmentation.IGNORE_LABEL)]

  def files(self, image_id, label):
    return {f"{image_id}.png": image_codec.encode_png(np.asarray(label.mask, np.uint8))}


@register
class DepthExporter(Exporter):
  """Depth maps; a 16-bit PNG plus a JSON side file with its scale and shift."""

  task = depth.Depth.name

  def from_decoded(self, decoded):
    values = np.asarray(decoded["depth"], np.float32)
    return depth.DepthLabel(np.where(decoded["valid"], values, np.float32(np.nan)),
                            kind=decoded["kind"].decode() or depth.KINDS[0])

  def files(self, image_id, label):
    codes, scale, shift = depth.quantize(label.depth)
    side = {"scale": float(scale), "shift": float(shift), "kind": label.kind,
            "decode": "value = shift + scale * (code - 1); code 0 = no depth"}
    return {f"{image_id}.png": image_codec.encode_png(codes),
            f"{image_id}.json": json.dumps(side, sort_keys=True).encode()}
