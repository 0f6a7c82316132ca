"""Task metrics and the evaluation loop: perfect predictions score perfectly."""
import numpy as np
import pytest
import tensorflow as tf

from must import evaluate
from must import schema as schema_lib
from must.tasks import detection, segmentation
from must.world import writer


def _oracle(world: str, task: str, corrupt: bool = False):
  """A predictor that answers from the eval split's own labels (optionally wrong)."""
  schema = schema_lib.Schema(writer.task_params())
  pattern = writer.load_metadata(world)["splits"]["eval"]["pattern"]
  answers = {e["encoded"]: e for e in evaluate._examples(pattern, schema)}

  def predict(encoded):
    outputs = []
    for data in encoded:
      label = answers[data]
      if task == "classification":
        probs = label["classification"]["probs"]
        outputs.append({"probs": np.roll(probs, 1) if corrupt else probs})
      elif task == "detection":
        boxes = label["detection"]["boxes"]
        boxes = boxes * 0.5 if corrupt else boxes
        padded = np.zeros([20, 4], np.float32)
        padded[:len(boxes)] = boxes
        classes = np.zeros([20], np.int32)
        classes[:len(boxes)] = label["detection"]["classes"]
        outputs.append({"boxes": padded, "classes": classes, "scores": np.ones([20], np.float32),
                        "num_detections": np.int32(len(boxes))})
      elif task == "segmentation":
        mask = label["segmentation"]["mask"].astype(np.int64)
        mask = np.roll(mask, 7, axis=1) if corrupt else mask
        outputs.append({"classes": np.minimum(mask, 10), "confidence": np.ones(mask.shape)})
      elif task == "depth":
        truth = label["depth"]["depth"]
        inverse = 3.0 / np.maximum(truth, 1e-3) + 0.5  # right up to scale and shift
        outputs.append({"depth": np.flipud(inverse) if corrupt else inverse})
      else:
        normals = label["surface_normals"]["normals"]
        outputs.append({"normals": -normals if corrupt else normals})
    return {k: np.stack([o[k] for o in outputs]) for k in outputs[0]}

  return predict


TASKS = ["classification", "detection", "segmentation", "depth", "surface_normals"]
PERFECT = {"classification": ("top1", 1.0), "detection": ("AP", 1.0),
           "segmentation": ("miou", 1.0), "depth": ("delta_1.25", 1.0),
           "surface_normals": ("within_11.25", 1.0)}


@pytest.mark.parametrize("task", TASKS)
def test_perfect_predictions_score_perfectly_and_wrong_ones_do_not(task, tiny_world):
  pattern = writer.load_metadata(tiny_world)["splits"]["eval"]["pattern"]
  key, best = PERFECT[task]
  perfect = evaluate.evaluate({task: _oracle(tiny_world, task)}, pattern,
                              writer.task_params(), batch_size=3)[task]
  wrong = evaluate.evaluate({task: _oracle(tiny_world, task, corrupt=True)}, pattern,
                            writer.task_params(), batch_size=3)[task]
  assert perfect[key] == pytest.approx(best, abs=1e-3)
  assert wrong[key] < best - 0.1


def test_segmentation_ignores_ignored_pixels():
  metric = segmentation.MeanIoU(3)
  mask = np.array([[1, 2], [255, 255]], np.uint8)
  metric.update({"mask": mask}, {"classes": np.array([[1, 2], [0, 0]])})
  assert metric.result()["miou"] == 1.0


def test_detection_without_detections_scores_zero():
  metric = detection.CocoAP(11)
  metric.update({"boxes": np.array([[0.1, 0.1, 0.5, 0.5]]), "classes": np.array([3]),
                 "image_size": (64, 64)},
                {"boxes": np.zeros([5, 4]), "scores": np.zeros([5]),
                 "classes": np.zeros([5], np.int32), "num_detections": 0})
  assert metric.result()["AP"] == 0.0


def test_table_has_a_row_per_model_and_a_column_per_metric():
  text = evaluate.table({"a": {"top1": 0.5}, "b": {"AP": 0.25, "top1": 1.0}})
  lines = text.splitlines()
  assert lines[0] == "| | AP | top1 |" and len(lines) == 4
  assert "| b | 0.25 | 1 |" in lines


def _student_eval(tmp_path, examples, input_size: int, **detection_head) -> dict:
  """The student's eval loop (parser, ground truth, aggregate_logs) on `examples`,
  each task served perfectly (from the examples' own labels)."""
  import must.student  # noqa: F401  pylint: disable=g-import-not-at-top
  from must.student import task as task_lib  # pylint: disable=g-import-not-at-top
  from official.core import exp_factory  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "eval.tfrecord")
  with tf.io.TFRecordWriter(path) as records:
    for example in examples:
      records.write(example.SerializeToString())
  params = exp_factory.get_exp_config("must_student")
  params.override({"task": {
      "model": {"input_size": [input_size, input_size, 3],
                "heads": [{"task": "detection", "num_classes": 11, "options": detection_head},
                          {"task": "segmentation", "num_classes": 11}]},
      "validation_data": {"input_path": path, "global_batch_size": 2}}}, is_strict=True)
  task = task_lib.StudentTask(params.task)
  state = None
  for _, labels in task.build_inputs(params.task.validation_data):
    truth = labels[evaluate.GROUND_TRUTH]["labels"]
    boxes, classes = truth["detection"]["boxes"], truth["detection"]["classes"]
    mask = tf.image.resize(truth["segmentation"]["mask"][..., None], [input_size] * 2,
                           method="nearest")[..., 0]
    served = {"detection": {"boxes": boxes, "classes": classes,
                            "scores": tf.ones(tf.shape(classes)),
                            "num_detections": tf.reduce_sum(tf.cast(classes > 0, tf.int32), 1)},
              "segmentation": {"classes": tf.cast(mask, tf.int32),
                               "confidence": tf.ones(tf.shape(mask))}}
    state = task.aggregate_logs(state, {"served": served,
                                        evaluate.GROUND_TRUTH: labels[evaluate.GROUND_TRUTH]})
  return task.reduce_aggregated_logs(state)


def test_students_score_every_raw_ground_truth_box_and_pixel(tmp_path):
  schema = schema_lib.Schema(writer.task_params())
  rng = np.random.default_rng(0)
  examples = []
  for count in (5, 1, 3):  # a batch of 5 and 1 boxes: padded to 5, cut back to each
    corners = rng.uniform(0.0, 0.5, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + 0.4], axis=1)
    # 2x2 blocks: a nearest resize to half the size keeps every class.
    mask = np.kron(rng.integers(0, 11, (32, 32)), np.ones((2, 2))).astype(np.uint8)
    examples.append(schema.encode(
        np.zeros((64, 64, 3), np.uint8),
        {"detection": detection.DetectionLabel(
            boxes, rng.integers(1, 11, count), scores=np.linspace(1.0, 0.1, count)),
         "segmentation": segmentation.SegmentationLabel(mask)}, image_format="png"))
  # Training targets keep 2 boxes of score >= 0.5 per image; the metric sees them all.
  metrics = _student_eval(tmp_path, examples, input_size=32, max_boxes=2, min_score=0.5)
  assert metrics["detection/AP"] == pytest.approx(1.0)
  assert metrics["detection/images"] == 3
  assert metrics["segmentation/miou"] == pytest.approx(1.0)
