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
from pycocotools import mask as coco_mask
from pycocotools import cocoeval
import tensorflow as tf

import tf_keras

from must import configs
from must import tasks
from must import visualize
from must.tasks import base
from must.tasks import heads
from official.modeling import hyperparams
from official.vision.configs import retinanet as retinanet_cfg
from official.vision.losses import focal_loss
from official.vision.losses import loss_utils
from official.vision.modeling.heads import dense_prediction_heads
from official.vision.modeling.layers import detection_generator
from official.vision.ops import anchor

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


@dataclasses.dataclass
class DetectionHeadOptions(hyperparams.Config):
  """The detection head's own settings (`HeadConfig.options`).

  Attributes:
    min_score: pseudo boxes under this score are no targets.
    max_boxes: boxes kept per image (padded to this for batching).
    match_threshold: anchor IoU to count as positive.
    unmatched_threshold: anchor IoU under which it is negative.
    focal_loss_alpha, focal_loss_gamma, huber_loss_delta, box_loss_weight:
      RetinaNet's loss settings.
    anchor: Model Garden's RetinaNet anchors.
    detection_generator: Model Garden's box decoding and NMS.
  """
  min_score: float = 0.0
  max_boxes: int = 32
  match_threshold: float = 0.5
  unmatched_threshold: float = 0.4
  focal_loss_alpha: float = 0.25
  focal_loss_gamma: float = 1.5
  huber_loss_delta: float = 0.1
  box_loss_weight: float = 50.0
  anchor: retinanet_cfg.Anchor = dataclasses.field(
      default_factory=lambda: retinanet_cfg.Anchor(num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                                                   anchor_size=2.0))
  detection_generator: retinanet_cfg.DetectionGenerator = dataclasses.field(
      default_factory=configs.detection_generator)


@dataclasses.dataclass
class DetectionAdapter(hyperparams.Config):
  """How a foreign detector's outputs map to the served boxes.

  Attributes:
    boxes, scores, classes: its output keys.
    num_detections: its count of valid rows ('' when every row is valid).
    box_format: 'yxyx' (ymin, xmin, ymax, xmax), 'xyxy' or 'xywh' (COCO).
    box_units: 'normalized' or 'pixels' of the model's input.
    class_offset: added to its class ids (e.g. 1 for 0-based ids of a 1-based
      space where 0 is background).
  """
  boxes: str = "detection_boxes"
  scores: str = "detection_scores"
  classes: str = "detection_classes"
  num_detections: str = "num_detections"
  box_format: str = "yxyx"
  box_units: str = "normalized"
  class_offset: int = 0


@tasks.register
class Detection(base.Task):
  """Detection with normalized boxes.

  Args:
    num_classes: size of the category id space, background (0) included.
  """

  name = "detection"
  primary_metric = "AP"
  has_classes = True
  world_teacher_split = True
  writes_coco = True
  head_options = DetectionHeadOptions
  served_outputs = {"boxes": 3, "scores": 2, "classes": 2, "num_detections": 1}
  adapter_outputs = DetectionAdapter

  def adapt_outputs(self, outputs, options, input_size):
    boxes = tf.cast(base.adapted_output(outputs, options.boxes), tf.float32)
    a, b, c, d = tf.unstack(boxes, axis=-1)
    if options.box_format not in ("yxyx", "xyxy", "xywh"):
      raise ValueError(f"detection box_format {options.box_format!r}; valid: yxyx, xyxy, xywh")
    boxes = {"yxyx": (a, b, c, d), "xyxy": (b, a, d, c),
             "xywh": (b, a, b + d, a + c)}[options.box_format]
    boxes = tf.stack(boxes, axis=-1)
    if options.box_units == "pixels":
      boxes /= tf.constant(list(input_size[:2]) * 2, tf.float32)
    elif options.box_units != "normalized":
      raise ValueError(f"detection box_units {options.box_units!r}; valid: normalized, pixels")
    scores = tf.cast(base.adapted_output(outputs, options.scores), tf.float32)
    rows = tf.shape(scores)[1]
    count = (tf.cast(tf.reshape(base.adapted_output(outputs, options.num_detections), [-1]),
                     tf.int32) if options.num_detections
             else tf.fill(tf.shape(scores)[:1], rows))
    classes = tf.cast(base.adapted_output(outputs, options.classes), tf.int32)
    return {"boxes": tf.clip_by_value(boxes, 0.0, 1.0), "scores": scores,
            "classes": classes + options.class_offset, "num_detections": count}

  def check_served(self, outputs):
    return "" if np.shape(outputs["boxes"])[-1] == 4 else (
        f"boxes have shape {np.shape(outputs['boxes'])}, not [B, N, 4]")

  def to_image_frame(self, outputs, image_info, input_size):
    """Boxes normalized to the fitted input -> normalized to each original image."""
    pixels = tf.constant(list(input_size[:2]) * 2, tf.float32)
    scale = tf.tile(image_info[:, 2, :], [1, 2])[:, None, :]
    original = tf.tile(image_info[:, 0, :], [1, 2])[:, None, :]
    boxes = outputs["boxes"] * pixels / (scale * original)
    return {**outputs, "boxes": tf.clip_by_value(boxes, 0.0, 1.0)}

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

  def student_head(self, config, model) -> "DetectionHead":
    return DetectionHead(config, model, self.num_classes)

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

  def world_label(self, scene):
    areas = np.bincount(scene.instances.ravel())[scene.box_instance_ids].astype(np.float32)
    return DetectionLabel(scene.boxes, scene.classes, areas=areas)

  def from_decoded(self, decoded):
    return DetectionLabel(
        boxes=np.asarray(decoded["boxes"], np.float32).reshape(-1, 4),
        classes=np.asarray(decoded["classes"], np.int64),
        scores=np.asarray(decoded["scores"], np.float32),
        areas=np.asarray(decoded["areas"], np.float32),
        is_crowd=np.asarray(decoded["is_crowd"], np.int64))

  def select(self, label, selection):
    """Drops boxes under min_score or outside the classes, and images left without one."""
    scores = np.asarray(label.scores)
    good = scores >= selection.min_score
    keep = good & base.in_classes(label.classes, selection.classes)
    if not keep.any() and not selection.keep_empty:
      if not len(scores):
        return None, base.NO_BOXES
      return None, base.BELOW_MIN_SCORE if not good.any() else base.CLASS_NOT_SELECTED
    return DetectionLabel(
        boxes=label.boxes[keep], classes=label.classes[keep], scores=scores[keep],
        areas=np.asarray(label.areas)[keep], is_crowd=np.asarray(label.is_crowd)[keep]), ""

  def balance_key(self, label):
    """Balanced by the class of the best box, ranked by its score."""
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

  def label_stats(self, label):
    scores = np.ones(len(label.boxes)) if label.scores is None else np.asarray(label.scores)
    return {"boxes": int(len(label.boxes)), "class_histogram": base.class_counts(label.classes),
            "boxes_per_image_histogram": {int(len(label.boxes)): 1},
            "score_histogram": np.histogram(np.clip(scores, 0, 1), base.SCORE_BINS,
                                            (0.0, 1.0))[0].tolist()}

  def stats_summary(self, totals):
    return {"boxes_per_image": totals["boxes"] / totals["pseudo"]} if totals.get("pseudo") else {}

  def quality_stats(self, truth, outputs, metric):
    """Per threshold of `base.QUALITY_THRESHOLDS` (`min_score`): the pseudo
    boxes kept and those matching a ground-truth box of their class at IoU >=
    `MATCH_IOU` (greedy by score, each truth matched once, as COCO does); and
    the ground-truth boxes (crowds left out)."""
    del metric
    label = self.pseudo_label(outputs, truth["image_size"], min_score=0.0)
    height, width = (float(v) for v in truth["image_size"])
    scale = np.array([height, width, height, width])
    crowd = np.asarray(truth.get("is_crowd", np.zeros(len(truth["classes"]))), bool)
    true_boxes = np.asarray(truth["boxes"], np.float64).reshape(-1, 4)[~crowd] * scale
    true_classes = np.asarray(truth["classes"]).reshape(-1)[~crowd]
    order = np.argsort(-label.scores, kind="stable")
    boxes, classes, scores = label.boxes[order] * scale, label.classes[order], label.scores[order]

    def xywh(b):
      return np.stack([b[:, 1], b[:, 0], b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]], -1)
    ious = (np.asarray(coco_mask.iou(xywh(boxes), xywh(true_boxes), [0] * len(true_boxes)))
            .reshape(len(boxes), len(true_boxes)) if len(boxes) and len(true_boxes)
            else np.zeros([len(boxes), len(true_boxes)]))
    free, matched = np.ones(len(true_boxes), bool), np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
      candidates = np.where(free & (true_classes == classes[i]), ious[i], -1.0)
      if candidates.size and candidates.max() >= MATCH_IOU:
        free[int(np.argmax(candidates))] = False
        matched[i] = True
    kept = scores[None, :] >= np.asarray(base.QUALITY_THRESHOLDS)[:, None] - 1e-6
    return {"truths": int(len(true_boxes)), "kept": kept.sum(1).tolist(),
            "matched": (kept & matched[None, :]).sum(1).tolist()}

  def quality_summary(self, totals):
    """Precision, recall and F1 at IoU `MATCH_IOU` per `min_score`; suggested:
    the `min_score` of the highest F1."""
    kept, matched = np.asarray(totals["kept"], float), np.asarray(totals["matched"], float)
    truths = float(totals["truths"])
    precision = np.divide(matched, kept, out=np.zeros_like(kept), where=kept > 0)
    recall = matched / truths if truths else np.zeros_like(matched)
    f1 = np.divide(2 * precision * recall, precision + recall,
                   out=np.zeros_like(precision), where=precision + recall > 0)
    curve = [{"threshold": t, "precision": float(p), "recall": float(r), "f1": float(f),
              "boxes": int(k)} for t, p, r, f, k in
             zip(base.QUALITY_THRESHOLDS, precision, recall, f1, kept)]
    best = int(np.argmax(f1))
    return {"curve": curve,
            "suggested": {**curve[best], "threshold": "min_score",
                          "value": base.QUALITY_THRESHOLDS[best],
                          "criterion": f"the min_score of the highest F1 at IoU {MATCH_IOU}"},
            "plot": {"title": f"boxes at IoU {MATCH_IOU}", "x": "min_score", "y": "",
                     "series": {name: [list(base.QUALITY_THRESHOLDS), values.tolist()]
                                for name, values in (("precision", precision),
                                                     ("recall", recall), ("F1", f1))}}}

  def uncertainty(self, label):
    """1 - the mean score of the boxes (0 for an image without a box)."""
    scores = np.asarray(label.scores if label.scores is not None else [], np.float64)
    return float(1.0 - scores.mean()) if scores.size else 0.0

  def draw(self, label, image, names, scale):
    scores = None if label.scores is None else np.asarray(label.scores)
    return [(visualize.draw_boxes(image, np.asarray(label.boxes), np.asarray(label.classes),
                                  names, scores), "boxes")]


MATCH_IOU = 0.5  # a pseudo box is right when it overlaps a truth of its class this much


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

  def merge(self, other):
    """Adds `other`'s images, renumbering their image and annotation ids."""
    offset, first = len(self.images), len(self.truths)
    self.images += [{**image, "id": image["id"] + offset} for image in other.images]
    self.truths += [{**truth, "id": truth["id"] + first, "image_id": truth["image_id"] + offset}
                    for truth in other.truths]
    self.detections += [{**d, "image_id": d["image_id"] + offset} for d in other.detections]
    return self

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


class DetectionHead(heads.StudentHead):
  """RetinaNet on pyramid levels 3..max_level, from Model Garden's parts.

  Targets come from Model Garden's `AnchorLabeler`, raw outputs from its
  `RetinaNetHead`, served boxes from its `MultilevelDetectionGenerator`; the
  loss is RetinaNet's focal loss plus Huber box regression, normalized by the
  number of positive anchors.
  """

  MIN_LEVEL = 3

  def __init__(self, config, model, num_classes=0):
    super().__init__(config, model, num_classes)
    self.options = options = heads.typed_options(config, DetectionHeadOptions)
    spec = options.anchor
    self.num_anchors = spec.num_scales * len(spec.aspect_ratios)
    generator = anchor.build_anchor_generator(
        min_level=self.MIN_LEVEL, max_level=model.max_level, num_scales=spec.num_scales,
        aspect_ratios=spec.aspect_ratios, anchor_size=spec.anchor_size)
    self.anchor_boxes = generator(image_size=tuple(model.input_size))
    self.labeler = anchor.AnchorLabeler(match_threshold=options.match_threshold,
                                        unmatched_threshold=options.unmatched_threshold)
    generator_config = options.detection_generator
    self.generator = detection_generator.MultilevelDetectionGenerator(
        apply_nms=True, pre_nms_top_k=generator_config.pre_nms_top_k,
        pre_nms_score_threshold=generator_config.pre_nms_score_threshold,
        nms_iou_threshold=generator_config.nms_iou_threshold,
        max_num_detections=generator_config.max_num_detections,
        nms_version=generator_config.nms_version, use_cpu_nms=generator_config.use_cpu_nms)

  def build(self):
    norm = self.model.norm_activation
    return _RetinaNetOnPyramid(dense_prediction_heads.RetinaNetHead(
        min_level=self.MIN_LEVEL, max_level=self.model.max_level, num_classes=self.num_classes,
        num_anchors_per_location=self.num_anchors, num_convs=self.config.num_convs,
        num_filters=self.config.num_filters, activation=norm.activation,
        use_sync_bn=norm.use_sync_bn, norm_momentum=norm.norm_momentum,
        norm_epsilon=norm.norm_epsilon, kernel_regularizer=self.model.l2_regularizer),
        name="detection_head")

  def targets(self, label, flip, output_size):
    keep = (label["scores"] >= self.options.min_score) & (label["classes"] > 0)
    boxes = tf.boolean_mask(label["boxes"], keep)
    classes = tf.boolean_mask(label["classes"], keep)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    boxes = tf.cond(flip, lambda: tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=-1),
                    lambda: boxes)
    height, width = (float(v) for v in output_size)
    pixels = boxes * tf.constant([height, width, height, width], tf.float32)
    cls_targets, box_targets, _, cls_weights, box_weights = self.labeler.label_anchors(
        self.anchor_boxes, pixels, classes[:, None])
    present = tf.cast(label["present"], tf.float32)
    n = tf.minimum(tf.shape(boxes)[0], self.options.max_boxes)
    pad = self.options.max_boxes - n
    return {
        "cls_targets": cls_targets, "box_targets": box_targets,
        "cls_weights": cls_weights * present, "box_weights": box_weights * present,
        "boxes": tf.pad(boxes[:n], [[0, pad], [0, 0]]),
        "classes": tf.pad(classes[:n], [[0, pad]], constant_values=-1),
        "num_boxes": n, "present": label["present"],
    }

  def loss(self, outputs, targets):
    config = self.options
    cls_loss_fn = focal_loss.FocalLoss(alpha=config.focal_loss_alpha, gamma=config.focal_loss_gamma,
                                       reduction=tf_keras.losses.Reduction.SUM)
    box_loss_fn = tf_keras.losses.Huber(config.huber_loss_delta,
                                        reduction=tf_keras.losses.Reduction.SUM)
    cls_weights, box_weights = targets["cls_weights"], targets["box_weights"]  # [B, anchors]
    y_true_cls = tf.one_hot(
        loss_utils.multi_level_flatten(targets["cls_targets"], last_dim=None), self.num_classes)
    y_pred_cls = loss_utils.multi_level_flatten(
        tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs["cls_outputs"]),
        last_dim=self.num_classes)
    y_true_box = loss_utils.multi_level_flatten(targets["box_targets"], last_dim=4)
    y_pred_box = loss_utils.multi_level_flatten(
        tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs["box_outputs"]),
        last_dim=4)
    cls_loss = cls_loss_fn(y_true=y_true_cls, y_pred=y_pred_cls, sample_weight=cls_weights)
    box_loss = box_loss_fn(y_true=y_true_box, y_pred=y_pred_box, sample_weight=box_weights)
    return cls_loss + config.box_loss_weight * box_loss, tf.reduce_sum(box_weights)

  def serve(self, outputs, image_size):
    batch = tf.shape(outputs["cls_outputs"][str(self.MIN_LEVEL)])[0]
    anchors = {level: tf.tile(boxes[None], [batch, 1, 1, 1])
               for level, boxes in self.anchor_boxes.items()}
    input_size = tf.constant(self.model.input_size, tf.float32)
    detections = self.generator(
        tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs["box_outputs"]),
        tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), outputs["cls_outputs"]),
        anchors, tf.tile(input_size[None], [batch, 1]))
    scale = tf.concat([input_size, input_size], axis=0)
    return {
        "boxes": tf.clip_by_value(detections["detection_boxes"] / scale, 0.0, 1.0),
        "scores": tf.cast(detections["detection_scores"], tf.float32),
        "classes": tf.cast(detections["detection_classes"], tf.int32),
        "num_detections": tf.cast(detections["num_detections"], tf.int32),
    }


class _RetinaNetOnPyramid(tf_keras.layers.Layer):
  """{'cls_outputs', 'box_outputs'} per level from the decoder's pyramid."""

  def __init__(self, head, **kwargs):
    super().__init__(**kwargs)
    self.head = head

  def call(self, features, training=None):
    scores, boxes, _ = self.head(features["pyramid"], training=training)
    return {"cls_outputs": scores, "box_outputs": boxes}
