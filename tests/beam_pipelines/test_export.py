"""The export pipeline: round trip of every format, COCO evaluation, Model Garden's
stock tasks training on the export, selection, balancing, hold-out, malformed input."""
import glob
import json
import math
import os

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
from pycocotools import coco
from pycocotools import cocoeval
import pytest
import tensorflow as tf

from beam_pipelines import export
from beam_pipelines import shards
from must import cli
from must import configs
from must import image_codec
from must import schema as schema_lib
from must.tasks import classification
from must.tasks import depth
from must.tasks import detection
from must.tasks import segmentation
import teachers
from official.core import exp_factory
from official.core import task_factory
from official.vision.dataloaders import classification_input
from official.vision.dataloaders import retinanet_input
from official.vision.dataloaders import segmentation_input
from official.vision.dataloaders import tf_example_decoder
from tests.beam_pipelines import labeled_shards

SIZE = 32  # hand-made examples
# Top-1 class and its probability per hand-made example: class 1 is common,
# 2 rare, 3-5 single.
TOP = [(1, 0.9), (1, 0.8), (1, 0.7), (1, 0.6), (1, 0.5), (1, 0.4), (2, 0.95), (2, 0.5),
       (3, 0.9), (4, 0.9)]
EXTRA = (5, 0.9)  # the one good example of the truncated shard


def _records(pattern: str) -> list[bytes]:
  return [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(pattern)))]


def _decode_all(records, task_params=labeled_shards.TASK_PARAMS) -> dict[str, dict]:
  schema = schema_lib.Schema(task_params)
  decoded = {}
  for record in records:
    d = tf.nest.map_structure(lambda t: t.numpy(), schema.decode(tf.constant(record)))
    decoded[d["source_id"].decode()] = d
  return decoded


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


# -- Shards made by the labeling pipeline ---------------------------------------


@pytest.fixture(scope="module")
def labeled(fake_labeled) -> str:
  """The tiny world's corpus labeled by the real pipeline with fake teachers."""
  return fake_labeled


@pytest.fixture(scope="module")
def exported(labeled, tmp_path_factory) -> tuple[str, dict]:
  """Every format, a quarter held out, through the binary's flags: (output dir, summary)."""
  output_dir = str(tmp_path_factory.mktemp("export"))
  summary = export.run(["--runner=DirectRunner",
                        f"--input_pattern={labeled}/pseudo_labeled-*.tfrecord",
                        f"--output_dir={output_dir}", "--holdout_fraction=0.25",
                        "--num_shards=1", "--top_k=4"])
  return output_dir, summary


def test_summary_counts_balance_and_name_the_categories(labeled, exported):
  output_dir, summary = exported
  n = len(_records(f"{labeled}/pseudo_labeled-*.tfrecord"))
  assert n == 24
  assert summary["counts"] == {"records_in": n, "images": n, "dead_letters": 0,
                               "balanced": True}
  for task in ("classification", "detection", "segmentation", "depth"):
    t = summary["tasks"][task]
    assert t["selected"] == n and t["train"] + t["holdout"] == n
    assert t["train_records"] == t["train"]  # no balancing: one record each
  assert 0 < summary["tasks"]["depth"]["holdout"] < n
  assert summary["config"]["categories"] == labeled_shards.CATEGORIES  # from teacher.json


def test_round_trip_of_coco_files_and_manifest(labeled, exported):
  output_dir, _ = exported
  records = _records(f"{labeled}/pseudo_labeled-*.tfrecord")
  truth = _decode_all(records)
  filenames = {}
  for record in records:
    feature = tf.train.Example.FromString(record).features.feature
    filenames[feature["image/source_id"].bytes_list.value[0].decode()] = \
        feature["image/filename"].bytes_list.value[0].decode()
  manifest = {e["id"]: e for e in _read_jsonl(os.path.join(output_dir, "manifest.jsonl"))}
  assert set(manifest) == set(truth)
  seen = set()
  for split in export.SPLITS:
    ground_truth = coco.COCO(os.path.join(output_dir, f"coco/detection_{split}.json"))
    assert [c["name"] for c in ground_truth.loadCats(ground_truth.getCatIds())] == \
        labeled_shards.CATEGORIES[1:]
    for image in ground_truth.loadImgs(ground_truth.getImgIds()):
      d = truth[image["source_id"]]
      seen.add(image["source_id"])
      entry = manifest[image["source_id"]]
      assert entry["split"] == split == export.split_of(image["source_id"], 0.25)
      assert entry["tasks"]["detection"]["coco_image_id"] == image["id"]
      assert (image["height"], image["width"]) == (64, 64)
      anns = ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=[image["id"]]))
      boxes = np.array([a["bbox"] for a in anns])  # x, y, w, h in pixels
      ymin, xmin, ymax, xmax = (d["detection"]["boxes"] * 64).T
      np.testing.assert_allclose(boxes, np.stack([xmin, ymin, xmax - xmin, ymax - ymin], 1),
                                 atol=1e-3)
      assert [a["category_id"] for a in anns] == d["detection"]["classes"].tolist()
      np.testing.assert_array_equal(np.float32([a["score"] for a in anns]),
                                    d["detection"]["scores"])
  assert seen == set(truth)

  for image_id, d in truth.items():
    entry = manifest[image_id]
    assert entry["source_path"] == filenames[image_id]
    mask_file, = entry["tasks"]["segmentation"]["files"]
    mask = image_codec.decode_png(open(os.path.join(output_dir, mask_file), "rb").read())
    np.testing.assert_array_equal(mask, d["segmentation"]["mask"])  # bit-exact
    png, side = entry["tasks"]["depth"]["files"]
    codes = image_codec.decode_png(open(os.path.join(output_dir, png), "rb").read())
    meta = _read_json(os.path.join(output_dir, side))
    assert codes.dtype == np.uint16 and meta["kind"] == "relative_inverse"
    values = depth.dequantize(codes, meta["scale"], meta["shift"])
    valid = d["depth"]["valid"]
    np.testing.assert_array_equal(np.isfinite(values), valid)
    np.testing.assert_allclose(values[valid], d["depth"]["depth"][valid],
                               atol=meta["scale"] / 2 + 1e-6)

  lines = {l["id"]: l for l in _read_jsonl(os.path.join(output_dir,
                                                        "files/classification.jsonl"))}
  assert set(lines) == set(truth)
  for image_id, line in lines.items():
    probs = truth[image_id]["classification"]["probs"]
    top = [t["class_id"] for t in line["top_k"]]
    assert len(top) == 4 and top[0] == line["label"] == int(np.argmax(probs))
    np.testing.assert_array_equal(np.float32([t["prob"] for t in line["top_k"]]), probs[top])
    assert line["top_k"][0]["name"] == labeled_shards.CATEGORIES[top[0]]


def test_task_records_carry_one_task_each_and_equal_the_shards(labeled, exported):
  output_dir, _ = exported
  truth = _decode_all(_records(f"{labeled}/pseudo_labeled-*.tfrecord"))
  for task in ("classification", "detection", "segmentation", "depth"):
    ids = set()
    for split in export.SPLITS:
      records = _records(os.path.join(output_dir, f"tfrecords/{task}/{split}-*.tfrecord"))
      for image_id, d in _decode_all(records).items():
        ids.add(image_id)
        assert export.split_of(image_id, 0.25) == split
        assert d[task]["present"] and d[task]["source"] == b"pseudo"
        others = [t for t in labeled_shards.TASK_PARAMS if t != task]
        assert not any(d[t]["present"] for t in others)
        for key, value in d[task].items():
          if key == "depth":
            np.testing.assert_array_equal(d[task]["valid"], truth[image_id][task]["valid"])
            np.testing.assert_allclose(value, truth[image_id][task][key], atol=1e-4)
          else:
            np.testing.assert_array_equal(value, truth[image_id][task][key], err_msg=key)
        if task == "classification":  # re-encoded as JPEG for the stock parser
          assert _image_format(records, image_id) == b"jpeg"
          error = np.abs(d["image"].astype(int) - truth[image_id]["image"].astype(int))
          assert error.mean() < 16
        else:
          np.testing.assert_array_equal(d["image"], truth[image_id]["image"])
    assert ids == set(truth), task


def _image_format(records, image_id: str) -> bytes:
  for record in records:
    feature = tf.train.Example.FromString(record).features.feature
    if feature["image/source_id"].bytes_list.value[0] == image_id.encode():
      return feature["image/format"].bytes_list.value[0]
  raise KeyError(image_id)


def test_coco_evaluation_of_the_export_against_itself(exported):
  output_dir, _ = exported
  path = os.path.join(output_dir, "coco/detection_train.json")
  ground_truth = coco.COCO(path)
  annotations = _read_json(path)["annotations"]

  def average_precision(results):
    evaluation = cocoeval.COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation.stats[0]

  assert average_precision(annotations) == pytest.approx(1.0)
  shifted = [{**a, "bbox": [a["bbox"][0] + a["bbox"][2] / 2, *a["bbox"][1:]]}
             for a in annotations]
  assert average_precision(shifted) < 0.5


def _stock_params(task: str, input_path: str, size: int = 64):
  """The teacher's Model Garden experiment, tiny: ResNet-10 at quarter width."""
  params = exp_factory.get_exp_config(configs.tiny(teachers.TEACHERS[task].EXPERIMENT))
  return configs.load(params, overrides=[
      ("size", configs.image_size_override(params, size, size)),
      ("test", {"task": {"train_data": {"input_path": input_path, "global_batch_size": 2,
                                        "shuffle_buffer_size": 4}}})])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_stock_model_garden_task_trains_on_its_export(exported, task):
  output_dir, _ = exported
  params = _stock_params(task, os.path.join(output_dir, f"tfrecords/{task}/train-*"))
  stock = task_factory.get_task(params.task)
  model = stock.build_model()
  optimizer = stock.create_optimizer(params.trainer.optimizer_config, params.runtime)
  metrics = stock.build_metrics(training=True)
  step = tf.function(lambda inputs: stock.train_step(inputs, model, optimizer, metrics=metrics))
  batches = list(stock.build_inputs(params.task.train_data).take(2))
  losses = [float(step(batch)["loss"]) for batch in batches]
  assert all(math.isfinite(loss) and loss > 0 for loss in losses)
  assert int(optimizer.iterations) == 2
  _, labels = batches[0]
  if task == "classification":  # the fake teacher's top classes, never background
    assert labels.shape == (2,) and (labels.numpy() >= 1).all()
  elif task == "detection":  # the exported boxes reach the anchors
    assert {m.name: float(m.result()) for m in metrics}["box_loss"] > 0
  else:  # the left half is class 1, the right half ignored
    mask = labels["masks"].numpy()
    assert set(np.unique(mask)) == {1, 255}


# -- Hand-made shards: selection, balancing, malformed input --------------------


def _hand_example(i: int, top: tuple[int, float]) -> dict:
  cls, prob = top
  probs = np.full([11], (1 - prob) / 10, np.float32)
  probs[cls] = prob
  if i == 9:
    boxes = np.zeros([0, 4], np.float32)
    classes, scores = np.zeros([0], np.int64), np.zeros([0], np.float32)
  elif i == 8:
    boxes, classes, scores = np.float32([[0.1, 0.1, 0.6, 0.6]]), np.int64([5]), np.float32([0.9])
  else:
    o = 0.01 * i
    boxes = np.float32([[0.1 + o, 0.2, 0.5, 0.6 + o], [0.3, 0.1, 0.9, 0.5], [0.0, 0.0, 1.0, 1.0]])
    classes, scores = np.int64([1, 2, 5]), np.float32([0.9, 0.6 - 0.003 * i, 0.5])
  mask = np.zeros([SIZE, SIZE], np.uint8)
  mask[:, : SIZE // 2] = 1 if i % 2 == 0 else 3
  mask[:4, :4] = 4
  mask[:, -SIZE // 4:] = segmentation.IGNORE_LABEL
  values = np.random.default_rng(i).uniform(1, 5, [SIZE, SIZE]).astype(np.float32)
  values[0, :] = np.nan
  return {"id": str(1000 + i), "image": labeled_shards.random_image((SIZE, SIZE), i),
          "labels": {
              "classification": classification.ClassificationLabel(probs),
              "detection": detection.DetectionLabel(boxes, classes, scores),
              "segmentation": segmentation.SegmentationLabel(mask),
              "depth": depth.DepthLabel(values)}}


def _malformed(good: dict) -> list[dict]:
  schema = schema_lib.Schema(labeled_shards.TASK_PARAMS)

  def encode(e, **labels):
    return schema.encode(e["image"], {**e["labels"], **labels}, image_format="png",
                         source_id=e["id"])

  other_version = encode({**good, "id": "2001"})
  other_version.features.feature[schema_lib.VERSION_KEY].int64_list.value[:] = [2]
  no_depth = schema.encode(good["image"], {t: l for t, l in good["labels"].items()
                                           if t != "depth"}, source_id="2002")
  bad_mask = encode({**good, "id": "2003"})
  bad_mask.features.feature[segmentation.ENCODED].bytes_list.value[:] = [b"not a png"]
  return [{"record": other_version.SerializeToString()},
          {"record": no_depth.SerializeToString()},
          {"record": b"not a tf.Example"},
          {"record": bad_mask.SerializeToString()},
          good]  # the same image again: a duplicate id


MALFORMED = {"schema_version": "#2001", "missing_task": "#2002", "bad_example": "hand-0",
             "bad_label": "#2003", "duplicate_id": "#1000", "unreadable_shard": "hand-1"}


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> str:
  """Two shards: ten good examples with the malformed ones; one good example and
  a truncated record."""
  root = tmp_path_factory.mktemp("hand")
  good = [_hand_example(i, top) for i, top in enumerate(TOP)]
  labeled_shards.write_shard(str(root / "hand-0.tfrecord"), good + _malformed(good[0]))
  labeled_shards.write_shard(str(root / "hand-1.tfrecord"), [_hand_example(10, EXTRA)])
  with open(root / "hand-1.tfrecord", "ab") as f:
    f.write(open(root / "hand-0.tfrecord", "rb").read()[:100])  # a record cut short
  return str(root)


def _export_config(root: str, output_dir: str, *flags: str) -> dict:
  options = pipeline_options.PipelineOptions([
      "--runner=DirectRunner", f"--input_pattern={root}/hand-*.tfrecord",
      f"--output_dir={output_dir}", "--num_shards=1", *flags])
  return export.run_config(options)


def _run(config, check=None) -> dict:
  with test_pipeline.TestPipeline(
      options=pipeline_options.PipelineOptions(["--runner=DirectRunner"])) as p:
    outputs = p | export.Export(config)
    if check:
      check(outputs)
  return _read_json(os.path.join(config["output_dir"], "summary.json"))


@pytest.fixture(scope="module")
def selected(hand, tmp_path_factory) -> tuple[dict, dict]:
  """Scores >= 0.55 of sphere and cube (ids 1, 2): (config, summary)."""
  config = _export_config(hand, str(tmp_path_factory.mktemp("selected")),
                          "--min_score=0.55", "--classes=sphere,2")

  def check(outputs):
    reasons = outputs["dead_letters"] | beam.Map(lambda d: d["reason"])
    util.assert_that(reasons, util.equal_to(sorted(MALFORMED)), label="EachReasonOnce")
    ids = outputs["manifest"] | beam.Map(lambda e: e["id"])
    util.assert_that(ids, util.equal_to([str(1000 + i) for i in range(11)]), label="GoodIds")

  return config, _run(config, check)


def test_malformed_input_is_counted_and_named(selected):
  config, summary = selected
  assert summary["counts"] == {"records_in": 17, "images": 11, "dead_letters": 6,
                               "balanced": True}
  assert summary["dead_letter_reasons"] == {reason: 1 for reason in MALFORMED}
  letters = _read_jsonl(os.path.join(config["output_dir"], "dead_letters.jsonl"))
  for letter in letters:
    assert MALFORMED[letter["reason"]] in letter["path"], letter
  by_reason = {l["reason"]: l["detail"] for l in letters}
  assert "version 2" in by_reason["schema_version"]
  assert "depth" in by_reason["missing_task"]


def test_selection_by_score_and_class(selected):
  config, summary = selected
  assert config["selection"]["classes"] == [1, 2]
  tasks = summary["tasks"]
  # Top-1 >= 0.55 and sphere or cube: 0.9, 0.8, 0.7, 0.6 of class 1 and 0.95 of class 2.
  assert tasks["classification"]["selected"] == 5
  assert tasks["classification"]["filtered"] == {"below_min_score": 3, "class_not_selected": 3}
  assert tasks["detection"]["filtered"] == {"class_not_selected": 1, "no_boxes": 1}
  assert tasks["segmentation"]["filtered"] == {"class_not_selected": 5}  # odd: class 3 only
  assert tasks["depth"]["selected"] == 11
  records = _records(os.path.join(config["output_dir"], "tfrecords/detection/train-*"))
  assert len(records) == 9
  for d in _decode_all(records).values():
    assert d["detection"]["classes"].tolist() == [1, 2]  # class 5 and the 0.5 box dropped
    assert (d["detection"]["scores"] >= 0.55).all()
  masks = _decode_all(_records(os.path.join(config["output_dir"],
                                            "tfrecords/segmentation/train-*")))
  assert sorted(masks) == [str(1000 + i) for i in range(0, 11, 2)]
  for d in masks.values():  # class 4 (not selected) became background
    assert set(np.unique(d["segmentation"]["mask"])) == {0, 1, 255}
    assert (d["segmentation"]["mask"][:4, :4] == 0).all()
  coco_file = _read_json(os.path.join(config["output_dir"], "coco/detection_train.json"))
  assert len(coco_file["images"]) == 9 and len(coco_file["annotations"]) == 18
  manifest = {e["id"]: e for e in _read_jsonl(os.path.join(config["output_dir"],
                                                           "manifest.jsonl"))}
  assert manifest["1009"]["tasks"]["detection"] == {"exported": False, "reason": "no_boxes"}
  assert manifest["1000"]["tasks"]["detection"]["train_copies"] == 1


def test_balancing_per_class_like_noisy_student(hand, tmp_path):
  config = _export_config(hand, str(tmp_path / "balanced"), "--balance_per_class=3",
                          "--formats=tfrecords", "--tasks=classification,detection")
  summary = _run(config)
  # Without depth among the tasks, the example lacking depth (2002) is good.
  assert summary["counts"]["images"] == 12 and summary["counts"]["balanced"]
  t = summary["tasks"]["classification"]
  # Class 1 (7 images) down to 3; 2 (2 images) and 3, 4, 5 (1 each) up to 3.
  assert t["train_records_per_class"] == {"1": 3, "2": 3, "3": 3, "4": 3, "5": 3}
  assert t["train_records"] == 15
  records = _records(os.path.join(config["output_dir"], "tfrecords/classification/train-*"))
  ids = [tf.train.Example.FromString(r).features.feature["image/source_id"]
         .bytes_list.value[0].decode() for r in records]
  counts = {i: ids.count(i) for i in set(ids)}
  common = ("2002", "1000", "1001", "1002", "1003", "1004", "1005")
  assert [counts.get(i, 0) for i in common] == [1, 1, 1, 0, 0, 0, 0]  # the most confident
  assert sorted([counts["1006"], counts["1007"]]) == [1, 2]
  assert counts["1008"] == counts["1009"] == counts["1010"] == 3
  # Detection: balanced by the best box's class; 1009 has no box and is not exported.
  assert summary["tasks"]["detection"]["train_records_per_class"] == {"1": 3, "5": 3}


def test_balancing_copies_are_deterministic_by_seed():
  members = [(0.5, 0, "a"), (0.5, 0, "b"), (0.5, 0, "c")]
  copies = {seed: dict(export.assign_copies((1, members), 7, seed)) for seed in range(8)}
  for seed, c in copies.items():
    assert sorted(n for n, _ in c.values()) == [2, 2, 3]
    assert c == dict(export.assign_copies((1, members), 7, seed))
  assert len({tuple(sorted(c.items())) for c in copies.values()}) > 1  # the seed matters
  down = dict(export.assign_copies((2, members[:2]), 2, 0))
  assert down == {"a": (1, 2), "b": (1, 2)}


def test_holdout_split_is_a_stable_hash_of_the_id():
  ids = [str(i) for i in range(2000)]
  assert all(export.split_of(i, 0.0) == export.TRAIN for i in ids)
  assert all(export.split_of(i, 1.0) == export.HOLDOUT for i in ids)
  small = {i for i in ids if export.split_of(i, 0.1) == export.HOLDOUT}
  large = {i for i in ids if export.split_of(i, 0.3) == export.HOLDOUT}
  assert small < large  # raising the fraction only moves images into the hold-out
  assert 0.07 < len(small) / len(ids) < 0.13 and 0.26 < len(large) / len(ids) < 0.34


def test_bad_options_are_named(hand, tmp_path):
  with pytest.raises(ValueError, match="surface_normals"):
    _export_config(hand, str(tmp_path), "--tasks=surface_normals")
  with pytest.raises(ValueError, match="--formats"):
    _export_config(hand, str(tmp_path), "--formats=coco,yolo")
  with pytest.raises(ValueError, match="unknown class 'dragon'"):
    _export_config(hand, str(tmp_path), "--classes=dragon")
  with pytest.raises(ValueError, match="--output_dir"):
    export.run_config(pipeline_options.PipelineOptions([f"--input_pattern={hand}/*"]))
  (tmp_path / "other.json").write_text('{"categories": []}')
  with pytest.raises(ValueError, match="neither"):
    _export_config(hand, str(tmp_path), f"--metadata={tmp_path}/other.json")
  assert shards.default_metadata_path("gs://b/run/*/x-*") == ""


# -- The binary's output dir and input -------------------------------------------


@pytest.mark.slow
def test_a_rerun_into_a_used_dir_leaves_none_of_the_previous_runs_files(labeled, tmp_path):
  flags = ["--runner=DirectRunner", f"--input_pattern={labeled}/pseudo_labeled-*.tfrecord",
           f"--output_dir={tmp_path}", "--num_shards=1"]
  export.run(flags)
  tasks = sorted(labeled_shards.TASK_PARAMS)
  assert all(os.path.isdir(tmp_path / export.TFRECORDS / t) for t in tasks)
  with pytest.raises(cli.UserError, match="holds another run's output"):
    export.run([*flags, f"--tasks={tasks[0]}"])
  summary = export.run([*flags, f"--tasks={tasks[0]}", "--overwrite"])
  written = sorted(os.path.relpath(p, tmp_path) for p in glob.glob(
      str(tmp_path / "**"), recursive=True) if os.path.isfile(p))
  assert written == sorted([*summary["files"], export.SUMMARY_FILE])
  assert os.listdir(tmp_path / export.TFRECORDS) == [tasks[0]]
  assert not any(t in f for f in summary["files"] for t in tasks[1:])


def test_shards_matching_no_file_stop_before_any_work(labeled, tmp_path):
  with pytest.raises(cli.UserError, match="--input_pattern .*: matches no file"):
    export.run(["--runner=DirectRunner", f"--input_pattern={labeled}/nothing-*.tfrecord",
                f"--metadata={labeled}/summary.json", f"--output_dir={tmp_path / 'out'}"])
  assert not (tmp_path / "out").exists()

# -- Model Garden's stock parsers on the export ---------------------------------

THIN = (1, 4000)  # the stock parsers' resize makes its short side 0 px


def _thin_example() -> dict:
  example = _hand_example(0, TOP[0])
  labels = example["labels"]
  labels["segmentation"] = segmentation.SegmentationLabel(np.ones(THIN, np.uint8))
  labels["depth"] = depth.DepthLabel(np.ones(THIN, np.float32))
  return {**example, "id": "3000", "image": labeled_shards.random_image(THIN, 0)}


@pytest.fixture(scope="module")
def stock_export(tmp_path_factory) -> tuple[str, dict]:
  """PNG-sourced hand examples and a 1 x 4000 image, exported: (output dir, summary)."""
  root = tmp_path_factory.mktemp("stock")
  good = [_hand_example(i, top) for i, top in enumerate(TOP[:4])]
  labeled_shards.write_shard(str(root / "hand-0.tfrecord"), good + [_thin_example()])
  config = _export_config(str(root), str(root / "export"), "--formats=tfrecords")
  return config["output_dir"], _run(config)


def _stock_parser(task: str):
  """(decoder, parser) of Model Garden's stock input for the task, default settings."""
  if task == "classification":
    return (classification_input.Decoder(),
            classification_input.Parser(output_size=[224, 224], num_classes=11))
  if task == "detection":
    return (tf_example_decoder.TfExampleDecoder(), retinanet_input.Parser(
        output_size=[640, 640], min_level=3, max_level=7, num_scales=3,
        aspect_ratios=[0.5, 1.0, 2.0], anchor_size=4.0))
  return segmentation_input.Decoder(), segmentation_input.Parser(output_size=[512, 512])


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_stock_parsers_take_every_exported_record(stock_export, task):
  output_dir, summary = stock_export
  records = _records(os.path.join(output_dir, f"tfrecords/{task}/train-*"))
  decoder, parser = _stock_parser(task)
  for training in (True, False):
    for record in records:
      image, _ = parser.parse_fn(training)(decoder.decode(tf.constant(record)))
      assert np.isfinite(image.numpy()).all()
  assert len(records) == 4  # the PNG-sourced images, not the thin one
  assert summary["dead_letter_reasons"] == {export.EXTREME_ASPECT_RATIO: 1}
  assert summary["counts"]["balanced"]
