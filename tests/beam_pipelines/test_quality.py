"""Label quality: the fake teachers' outputs on the tiny world's partially labeled
corpus scored against its ground truth, checked against a hand computation;
the suggested thresholds, the plot, and the inspection's uncertainty order."""
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml

from beam_pipelines import inference
from beam_pipelines import inspect_labels
from beam_pipelines import pseudo_label
from beam_pipelines import quality
from must import cli
from must import report
from must import schema as schema_lib
from must.tasks import base
from must.tasks import classification
from must.tasks import depth as depth_lib
from must.tasks import detection
from must.tasks import segmentation
from tests.beam_pipelines import fake_teachers
from tests.beam_pipelines import labeled_shards

THRESHOLDS = np.asarray(base.QUALITY_THRESHOLDS)


def _flags(tmp_path, pattern, *extra):
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  config = tmp_path / "teachers.yaml"
  config.write_text(yaml.safe_dump({"teachers": [
      {"task": t, "path": p, "batch_size": 4} for t, p in teachers.items()]}))
  return ["--runner=DirectRunner", f"--input_pattern={pattern}",
          f"--teachers_config={config}", f"--output_dir={tmp_path / 'out'}", *extra]


MEANS = (10, 20, 30, 47)  # constant images: the fake classifier picks 1 + mean % 10


def _truth_examples():
  """Four 32x32 images (the fake teachers' size: no resizing) with ground truth
  for every task, chosen to agree with the fake teachers in part: classes right
  but on the last image; two of the four kept boxes right; segmentation right on
  the left half (confidence 0.9) and the right half's top (0.4); depth exact."""
  h, w = fake_teachers.INPUT_SIZE
  mask = np.ones((h, w), np.uint8)
  mask[:, w // 2:], mask[h // 2:, w // 2:] = 2, 3
  examples = []
  for i, mean in enumerate(MEANS):
    ramp = np.linspace(1.0, 2.0, w, dtype=np.float32)[None, :] + mean / 255.0
    right = 1 + mean % 10
    examples.append({
        "id": f"img{i}", "image": np.full((h, w, 3), mean, np.uint8),
        "provenance": schema_lib.Provenance(),
        "labels": {
            "classification": classification.ClassificationLabel.one_hot(
                right if i < 3 else right % 10 + 1, fake_teachers.NUM_CLASSES),
            "detection": detection.DetectionLabel(
                boxes=np.array([fake_teachers.BOXES[0], fake_teachers.BOXES[3],
                                [0.7, 0.0, 0.95, 0.3]], np.float32),
                classes=np.array([1, 4, 6])),
            "segmentation": segmentation.SegmentationLabel(mask),
            "depth": depth_lib.DepthLabel(np.broadcast_to(1.0 / ramp, (h, w)).copy(),
                                          kind="metric")}})
  return examples


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  """The binary over a hand-labeled shard (quality auto: on with TFRecords):
  (summary, quality.json, the input examples, the output dir)."""
  tmp_path = tmp_path_factory.mktemp("quality")
  (tmp_path / "input").mkdir()
  pattern = str(tmp_path / "input" / "truth.tfrecord")
  labeled_shards.write_shard(pattern, _truth_examples())
  summary = pseudo_label.run(_flags(tmp_path, pattern, "--input_format=tfrecord"),
                             fake_teachers.load)
  with open(tmp_path / "out" / quality.QUALITY_FILE) as f:
    report = json.load(f)
  inputs = [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern)))]
  return summary, report, inputs, str(tmp_path / "out")


def _with_truth(inputs, task):
  """(pixels, the input's decoded ground truth of `task`) of the images that have it."""
  schema = schema_lib.Schema({task: labeled_shards.TASK_PARAMS[task]})
  found = []
  for example in inputs:
    feature = example.features.feature
    if feature[schema_lib.source_key(task)].bytes_list.value[:1] != [b"ground_truth"]:
      continue
    decoded = schema.decode(tf.constant(example.SerializeToString()))
    found.append((decoded["image"].numpy(), tf.nest.map_structure(np.asarray, decoded[task]),
                  feature["image/encoded"].bytes_list.value[0]))
  assert found, f"the tiny world's partial corpus has no {task} ground truth"
  return found


def _outputs(out, task, encoded, image_size):
  """The fake teacher's outputs for one image, dense maps at its size."""
  teacher = fake_teachers.load(os.path.join(os.path.dirname(out), "teachers", task))
  outputs = {k: v[0] for k, v in teacher.predict([encoded]).items()}
  return inference.resize_outputs(outputs, fake_teachers.INPUT_SIZE, image_size)


def test_files_are_published_and_listed(scored):
  summary, report, _, out = scored
  assert quality.QUALITY_FILE in summary["files"] and quality.QUALITY_PLOT in summary["files"]
  with Image.open(os.path.join(out, quality.QUALITY_PLOT)) as plot:
    assert plot.size[0] > 300 and plot.size[1] > 200
  assert set(report["tasks"]) == set(fake_teachers.TASKS)
  for task, stats in report["tasks"].items():
    assert stats["images"] == summary["tasks"][task]["ground_truth"], task


def test_classification_by_hand(scored):
  _, report, inputs, out = scored
  correct, confidence = [], []
  for image, truth, encoded in _with_truth(inputs, "classification"):
    probs = _outputs(out, "classification", encoded, image.shape[:2])["probs"]
    correct.append(int(np.argmax(probs)) == int(truth["label"]))
    confidence.append(float(probs.max()))
  got = report["tasks"]["classification"]
  assert got["metric"]["top1"] == pytest.approx(np.mean(correct)) == 0.75
  kept = np.asarray(confidence)[None] >= THRESHOLDS[:, None] - 1e-6
  for point, keep in zip(got["curve"], kept):
    assert point["kept_fraction"] == pytest.approx(keep.mean())
    assert point["accuracy"] == pytest.approx(np.asarray(correct)[keep].mean() if keep.any()
                                              else 0.0)


def _iou(a, b):
  ymin, xmin = max(a[0], b[0]), max(a[1], b[1])
  ymax, xmax = min(a[2], b[2]), min(a[3], b[3])
  inter = max(ymax - ymin, 0) * max(xmax - xmin, 0)
  area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
  return inter / (area(a) + area(b) - inter)


def test_detection_precision_recall_and_suggested_threshold_by_hand(scored):
  _, report, inputs, _ = scored
  valid = [i for i in range(len(fake_teachers.BOXES))  # the zero-area box is no label
           if _iou(fake_teachers.BOXES[i], fake_teachers.BOXES[i]) > 0]
  kept, matched, truths = np.zeros(len(THRESHOLDS)), np.zeros(len(THRESHOLDS)), 0
  for _, truth, _ in _with_truth(inputs, "detection"):
    free = list(zip(truth["boxes"].tolist(), truth["classes"].tolist()))
    truths += len(free)
    for i in sorted(valid, key=lambda i: -fake_teachers.SCORES[i]):
      box, cls, score = fake_teachers.BOXES[i], fake_teachers.CLASSES[i], fake_teachers.SCORES[i]
      above = score >= THRESHOLDS - 1e-6
      kept += above
      best = max(((_iou(box, t), j) for j, (t, c) in enumerate(free) if c == cls), default=None)
      if best and best[0] >= 0.5:
        matched += above
        free.pop(best[1])
  got = report["tasks"]["detection"]
  precision = np.divide(matched, kept, out=np.zeros_like(kept), where=kept > 0)
  recall = matched / truths
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(kept),
                 where=precision + recall > 0)
  assert [p["precision"] for p in got["curve"]] == pytest.approx(precision.tolist())
  assert [p["recall"] for p in got["curve"]] == pytest.approx(recall.tolist())
  assert got["suggested"]["threshold"] == "min_score"
  assert got["suggested"]["value"] == pytest.approx(THRESHOLDS[int(np.argmax(f1))])
  assert "F1" in got["suggested"]["criterion"]
  assert [p["f1"] for p in got["curve"]] == pytest.approx(f1.tolist())
  assert max(f1) > 0.5 and 0 < got["metric"]["AP"] < 1


def test_segmentation_kept_pixel_accuracy_by_hand(scored):
  _, report, inputs, out = scored
  kept, correct, pixels = np.zeros(len(THRESHOLDS)), np.zeros(len(THRESHOLDS)), 0
  for image, truth, encoded in _with_truth(inputs, "segmentation"):
    outputs = _outputs(out, "segmentation", encoded, image.shape[:2])
    valid = truth["mask"] != 255
    pixels += valid.sum()
    right = (outputs["classes"] == truth["mask"])[valid]
    for i, t in enumerate(THRESHOLDS):
      above = outputs["confidence"][valid] >= t - 1e-6
      kept[i] += above.sum()
      correct[i] += (above & right).sum()
  got = report["tasks"]["segmentation"]
  accuracy = np.divide(correct, kept, out=np.zeros_like(kept), where=kept > 0)
  assert [p["accuracy"] for p in got["curve"]] == pytest.approx(accuracy.tolist())
  assert [p["kept_fraction"] for p in got["curve"]] == pytest.approx((kept / pixels).tolist())
  reaching = [i for i in range(len(THRESHOLDS)) if kept[i] and accuracy[i] >= 0.9]
  expected = reaching[0] if reaching else int(np.argmax(accuracy))
  assert got["suggested"]["value"] == pytest.approx(THRESHOLDS[expected]) == 0.5
  assert got["suggested"]["threshold"] == "min_confidence"
  assert got["metric"]["pixel_accuracy"] == pytest.approx(correct[0] / pixels)


def test_depth_error_is_scored_and_has_no_threshold(scored):
  _, report, _, _ = scored
  got = report["tasks"]["depth"]
  assert got["metric"]["delta_1.25"] == pytest.approx(1.0)
  assert got["suggested"] is None and got["curve"][0]["images"] == len(MEANS)


def test_confidence_summary_suggests_the_lowest_threshold_reaching_the_target():
  # Labels of confidence 0.95 (all right), 0.75 (3 of 4 right), 0.35 (wrong).
  parts = [base.confidence_quality([c] * n, [True] * k + [False] * (n - k))
           for c, n, k in ((0.95, 2, 2), (0.75, 4, 3), (0.35, 2, 0))]
  totals = quality.add_trees(quality.add_trees(parts[0], parts[1]), parts[2])
  summary = base.confidence_quality_summary(totals, "min_score", "image")
  assert summary["curve"][0]["accuracy"] == pytest.approx(5 / 8)
  assert summary["curve"][7]["accuracy"] == pytest.approx(5 / 6)  # 0.75 and 0.95 kept
  assert summary["suggested"]["value"] == pytest.approx(0.8)  # only the 0.95 ones: 100 %
  assert summary["suggested"]["kept_fraction"] == pytest.approx(2 / 8)
  ece = (2 * 0.05 + 4 * abs(0.75 - 0.75) + 2 * 0.35) / 8
  assert summary["expected_calibration_error"] == pytest.approx(ece)


def test_cocoap_merge_equals_one_accumulator():
  task = detection.Detection(num_classes=4)
  labels = [{"boxes": np.array([[0.1, 0.1, 0.5, 0.5]]), "classes": np.array([1]),
             "image_size": (40, 40)},
            {"boxes": np.array([[0.2, 0.2, 0.9, 0.9]]), "classes": np.array([2]),
             "image_size": (30, 50)}]
  outputs = [{"boxes": np.array([[0.1, 0.12, 0.5, 0.5], [0.6, 0.6, 0.7, 0.7]]),
              "scores": np.array([0.9, 0.8]), "classes": np.array([1, 1]),
              "num_detections": 2},
             {"boxes": np.array([[0.2, 0.2, 0.8, 0.9]]), "scores": np.array([0.7]),
              "classes": np.array([3]), "num_detections": 1}]
  whole, parts = task.metric(), []
  for label, output in zip(labels, outputs):
    whole.update(label, output)
    parts.append(task.metric())
    parts[-1].update(label, output)
  assert parts[0].merge(parts[1]).result() == whole.result()


def test_quality_on_with_image_files_is_refused(tmp_path):
  with pytest.raises(cli.UserError, match="tfrecord"):
    pseudo_label.run(_flags(tmp_path, str(tmp_path / "*.png"), "--quality=on"),
                     fake_teachers.load)


def test_uncertainty_sort_puts_the_least_sure_first(tmp_path):
  rng = np.random.default_rng(0)
  probs = {f"img{i}": p for i, p in enumerate(
      [[0.97, 0.01, 0.01, 0.01], [0.25, 0.25, 0.25, 0.25], [0.6, 0.2, 0.1, 0.1],
       [0.4, 0.3, 0.2, 0.1]])}
  examples = [{"id": name, "image": rng.integers(0, 255, (16, 16, 3), np.uint8),
               "labels": {"classification": classification.ClassificationLabel(
                   np.asarray(p, np.float32))}} for name, p in probs.items()]
  task = classification.Classification(num_classes=4)
  entropy = {n: float(-(np.asarray(p) * np.log(p)).sum() / np.log(4)) for n, p in probs.items()}
  assert task.uncertainty(examples[1]["labels"]["classification"]) == pytest.approx(1.0)
  (tmp_path / "shards").mkdir()
  shard = str(tmp_path / "shards" / "labels.tfrecord")
  labeled_shards.write_shard(shard, examples, {"classification": {"num_classes": 4}})
  report = inspect_labels.run(["--runner=DirectRunner", f"--input_pattern={shard}",
                               f"--output_dir={tmp_path / 'inspect'}", "--num_images=3",
                               "--sort_by=uncertainty"])
  expected = sorted(entropy, key=lambda n: -entropy[n])[:3]
  assert report["sampled_ids"] == expected


def test_the_report_tabulates_the_suggested_thresholds(scored):
  _, quality_report, _, _ = scored
  table = report.label_quality_table(quality_report)
  assert "| detection | 4 | AP 0.667 | min_score 0.0 |" in table
  assert "| segmentation | 4 | miou 0.500 | min_confidence 0.5 | accuracy 1.000" in table
  assert "| depth | 4 | delta_1.25 1.000 | none |" in table
