"""Object detection: boxes with classes and scores.

Features are the ones Model Garden's `TfExampleDecoder` reads
(`image/object/bbox/{ymin,xmin,ymax,xmax}` normalized to [0, 1],
`image/object/class/label`, `image/object/area`, `image/object/is_crowd`),
plus `image/object/score` (1.0 for ground truth).
"""
import contextlib
import dataclasses
import io

import numpy as np
from pycocotools import coco
from pycocotools import cocoeval
import tensorflow as tf

from must import tasks
from must.tasks import base

YMIN, XMIN, YMAX, XMAX = (f"image/object/bbox/{k}" for k in ("ymin", "xmin", "ymax", "xmax"))
CLASS = "image/object/class/label"
SCORE = "image/object/score"
AREA = "image/object/area"
IS_CROWD = "image/object/is_crowd"


@dataclasses.dataclass
class DetectionLabel:
  """Boxes of one image.

  Attributes:
    boxes: float [N, 4] (ymin, xmin, ymax, xmax), normalized to [0, 1].
    classes: int [N] category ids (0 is background and never a box).
    scores: float [N]; None means ground truth (all 1.0).
    areas: float [N] object areas in pixels; None means box areas.
    is_crowd: int [N]; None means all 0.
  """
  boxes: np.ndarray
  classes: np.ndarray
  scores: np.ndarray | None = None
  areas: np.ndarray | None = None
  is_crowd: np.ndarray | None = None


@tasks.register
class Detection(base.Task):
  """Detection with normalized boxes.

  Args:
    num_classes: size of the category id space, background (0) included.
  """

  name = "detection"

  def __init__(self, num_classes: int):
    self.num_classes = num_classes

  def features(self, label: DetectionLabel, image_size) -> base.Features:
    boxes = np.asarray(label.boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    classes = np.asarray(label.classes, np.int64).reshape(-1)
    if len(classes) != n:
      raise ValueError(f"detection label has {n} boxes but {len(classes)} classes")
    if n and (classes.min() < 1 or classes.max() >= self.num_classes):
      raise ValueError(f"detection classes must be in [1, {self.num_classes}), "
                       f"got {classes.min()}..{classes.max()}")
    if n and (boxes.min() < 0 or boxes.max() > 1 or
              np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1])):
      raise ValueError("detection boxes must be normalized (ymin, xmin, ymax, xmax) "
                       "with 0 <= min <= max <= 1")
    scores = np.ones([n], np.float32) if label.scores is None else label.scores
    if label.areas is None:
      areas = ((boxes[:, 2] - boxes[:, 0]) * image_size[0] *
               (boxes[:, 3] - boxes[:, 1]) * image_size[1])
    else:
      areas = label.areas
    is_crowd = np.zeros([n], np.int64) if label.is_crowd is None else label.is_crowd
    return {
        YMIN: base.float_feature(boxes[:, 0]),
        XMIN: base.float_feature(boxes[:, 1]),
        YMAX: base.float_feature(boxes[:, 2]),
        XMAX: base.float_feature(boxes[:, 3]),
        CLASS: base.int64_feature(classes),
        SCORE: base.float_feature(scores),
        AREA: base.float_feature(areas),
        IS_CROWD: base.int64_feature(is_crowd),
    }

  def feature_spec(self) -> base.FeatureSpec:
    spec = {k: tf.io.VarLenFeature(tf.float32) for k in (YMIN, XMIN, YMAX, XMAX, SCORE, AREA)}
    spec.update({k: tf.io.VarLenFeature(tf.int64) for k in (CLASS, IS_CROWD)})
    return spec

  def pseudo_label(self, outputs, image_size, min_score: float = 0.5) -> DetectionLabel:
    """Hard boxes of the teacher's detections with score >= `min_score`.

    Args:
      outputs: one image's teacher outputs: `boxes` float [N, 4] normalized
        (ymin, xmin, ymax, xmax), `scores` [N], `classes` [N], and optionally
        `num_detections` (a scalar; rows past it are padding).
      image_size: (height, width) of the stored image; normalized boxes carry
        over from the teacher's input size unchanged.
      min_score: the score threshold (the paper uses 0.5).

    Returns:
      A DetectionLabel with boxes clipped to the image; boxes of zero area and
      detections of the background or an unknown class are dropped.
    """
    del image_size
    boxes = np.asarray(outputs["boxes"], np.float32).reshape(-1, 4)
    scores = np.asarray(outputs["scores"], np.float32).reshape(-1)
    classes = np.asarray(outputs["classes"], np.int64).reshape(-1)
    n = int(np.asarray(outputs.get("num_detections", len(boxes))).reshape(()))
    boxes, scores, classes = np.clip(boxes[:n], 0.0, 1.0), scores[:n], classes[:n]
    keep = ((scores >= min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) &
            (classes >= 1) & (classes < self.num_classes))
    return DetectionLabel(boxes=boxes[keep], classes=classes[keep], scores=scores[keep])

  def metric(self) -> "CocoAP":
    return CocoAP(self.num_classes)

  def decode(self, parsed, image_size, present):
    del image_size, present  # Absent: zero boxes.
    boxes = tf.stack([base.dense(parsed, k) for k in (YMIN, XMIN, YMAX, XMAX)], axis=-1)
    return {
        "boxes": boxes,
        "classes": tf.cast(base.dense(parsed, CLASS), tf.int32),
        "scores": base.dense(parsed, SCORE),
        "areas": base.dense(parsed, AREA),
        "is_crowd": tf.cast(base.dense(parsed, IS_CROWD), tf.bool),
    }


class CocoAP(base.Metric):
  """COCO box AP and AP50 through pycocotools.

  Labels need `boxes`, `classes` (and optionally `is_crowd`, `areas`) plus
  the image size as `image_size`; outputs are the teacher signature's
  normalized `boxes`, `scores`, `classes` and `num_detections`.
  """

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.images, self.truths, self.detections = [], [], []

  def update(self, label, outputs):
    image_id = len(self.images) + 1
    height, width = (int(v) for v in label["image_size"])
    self.images.append({"id": image_id, "height": height, "width": width})
    scale = np.array([height, width, height, width], np.float64)
    crowd = label.get("is_crowd", np.zeros(len(label["classes"]), bool))
    for box, cls, is_crowd in zip(np.asarray(label["boxes"]) * scale, label["classes"], crowd):
      ymin, xmin, ymax, xmax = box
      self.truths.append({"id": len(self.truths) + 1, "image_id": image_id,
                          "category_id": int(cls), "iscrowd": int(is_crowd),
                          "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                          "area": float((xmax - xmin) * (ymax - ymin))})
    n = int(outputs["num_detections"])
    for box, score, cls in zip(np.asarray(outputs["boxes"])[:n] * scale,
                               outputs["scores"][:n], outputs["classes"][:n]):
      ymin, xmin, ymax, xmax = box
      self.detections.append({"image_id": image_id, "category_id": int(cls),
                              "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                              "score": float(score)})

  def result(self):
    if not self.truths or not self.detections:
      return {"AP": 0.0, "AP50": 0.0, "images": len(self.images)}
    ground_truth = coco.COCO()
    ground_truth.dataset = {
        "images": self.images, "annotations": self.truths,
        "categories": [{"id": i} for i in range(1, self.num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
      ground_truth.createIndex()
      evaluation = cocoeval.COCOeval(ground_truth, ground_truth.loadRes(self.detections), "bbox")
      evaluation.evaluate()
      evaluation.accumulate()
      evaluation.summarize()
    return {"AP": float(evaluation.stats[0]), "AP50": float(evaluation.stats[1]),
            "images": len(self.images)}
