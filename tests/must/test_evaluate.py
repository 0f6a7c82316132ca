"""Task metrics and the evaluation loop: perfect predictions score perfectly."""
import numpy as np
import pytest

from must import evaluate
from must import schema as schema_lib
from must.tasks import depth, detection, segmentation
from must.world import writer


def _oracle(world: str, task: str, corrupt: bool = False):
  """A predictor that answers from the eval split's own labels (optionally wrong)."""
  schema = schema_lib.Schema(writer.task_params())
  pattern = writer.load_metadata(world)["splits"]["eval"]["pattern"]
  answers = {e["image"].tobytes(): e for e in evaluate._examples(pattern, schema)}

  def predict(images):
    outputs = []
    for image in images:
      label = answers[image.tobytes()]
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
        outputs.append({"probs": np.eye(11, dtype=np.float32)[np.minimum(mask, 10)]})
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


def test_depth_alignment_recovers_scale_and_shift():
  rng = np.random.default_rng(0)
  target = rng.uniform(0.1, 2.0, (8, 8)).astype(np.float32)
  valid = np.ones_like(target, bool)
  valid[0] = False
  prediction = (target - 0.3) / 2.5
  prediction[0] = 99.0  # invalid pixels must not pull the fit
  aligned = depth.align_scale_shift(prediction, target, valid)
  np.testing.assert_allclose(aligned[valid], target[valid], rtol=1e-4)


def test_segmentation_ignores_ignored_pixels():
  metric = segmentation.MeanIoU(3)
  mask = np.array([[1, 2], [255, 255]], np.uint8)
  probs = np.eye(3, dtype=np.float32)[[[1, 2], [0, 0]]]
  metric.update({"mask": mask}, {"probs": probs})
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
