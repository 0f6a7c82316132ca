"""The pseudo-labeling pipeline with fake teachers: labels, thresholds,
ground truth, the join by id, count balance, and the written shards read back."""
import glob
import io
import json
import os
import pathlib
import re
import tracemalloc

import apache_beam as beam
from apache_beam.options import pipeline_options
from apache_beam.testing import test_pipeline
from apache_beam.testing import util
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml

from beam_pipelines import common
from beam_pipelines import decode
from beam_pipelines import inference
from beam_pipelines import pseudo_label
from must import cli
from must import configs
from must import schema as schema_lib
from must import serving
from must.tasks import segmentation
from official.vision.dataloaders import classification_input
from official.vision.dataloaders import segmentation_input
from official.vision.dataloaders import tf_example_decoder
from tests.beam_pipelines import fake_teachers

SIZES = [(20, 30), (48, 40), (64, 64), (33, 17)]  # (height, width): not the teachers' 32x32
BAD = {"empty.jpg": b"", "notes.txt": b"hello\n", "truncated.png": None}


def _image_bytes(size, seed, fmt="PNG"):
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


def _corpus(root) -> str:
  os.makedirs(root / "part-000")
  for i, size in enumerate(SIZES):
    fmt = "JPEG" if i % 2 else "PNG"
    (root / "part-000" / f"{i}.{fmt.lower()}").write_bytes(_image_bytes(size, i, fmt))
  for name, data in BAD.items():
    if data is None:
      whole = _image_bytes((16, 16), 9)
      data = whole[: len(whole) // 2]
    (root / "part-000" / name).write_bytes(data)
  return str(root / "part-*" / "*")


def _config(tmp_path, pattern, *, thresholds=None, input_format=pseudo_label.IMAGES,
            mode=pseudo_label.FUSED, name="out"):
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  raw = {"teachers": [{"task": t, "path": p, "batch_size": 2} for t, p in teachers.items()],
         "thresholds": thresholds or {}}
  config = pseudo_label.resolve_config(raw)
  config["options"] = {"input_pattern": pattern, "input_format": input_format,
                       "output_dir": str(tmp_path / name), "num_shards": 2,
                       "max_pixels": 1_000_000, "inference_mode": mode}
  return config


def _options():
  return pipeline_options.PipelineOptions(["--runner=DirectRunner"])


def _run(config, check=None):
  """Runs the pipeline; `check(outputs)` may add assert_that's. Returns the records."""
  with test_pipeline.TestPipeline(options=_options()) as p:
    outputs = p | pseudo_label.PseudoLabel(config, loader=fake_teachers.load)
    if check:
      check(outputs)
  return _read_records(config["options"]["output_dir"])


def _read_records(output_dir):
  files = sorted(glob.glob(os.path.join(output_dir, "pseudo_labeled-*.tfrecord")))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _summary(config):
  with open(os.path.join(config["options"]["output_dir"], "summary.json")) as f:
    return json.load(f)


def _schema(config):
  return schema_lib.Schema(config["task_params"])


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
  """The fused pipeline over a small corpus with bad files: (config, records)."""
  tmp_path = tmp_path_factory.mktemp("default")
  config = _config(tmp_path, _corpus(tmp_path / "corpus"))

  def check(outputs):
    util.assert_that(outputs["records"] | beam.combiners.Count.Globally(),
                     util.equal_to([len(SIZES)]), label="AllGoodLabeled")
    names = outputs["dead_letters"] | beam.Map(lambda d: os.path.basename(d["path"]))
    util.assert_that(names, util.equal_to(sorted(BAD)), label="BadNamed")

  return config, _run(config, check)


def test_count_balance_and_summary(default_run):
  config, records = default_run
  summary = _summary(config)
  counts = summary["counts"]
  assert counts == {"images_in": len(SIZES) + len(BAD), "examples_out": len(SIZES),
                    "dead_letters": len(BAD), "duplicates": 0, "balanced": True}
  assert len(records) == len(SIZES)
  assert summary["dead_letter_reasons"] == {"empty": 1, "not_an_image": 1,
                                            "truncated_or_corrupt": 1}
  assert summary["teachers"]["detection"] == "fake_detection@v1"
  tasks = summary["tasks"]
  assert tasks["detection"]["boxes_per_image"] == 3
  assert tasks["detection"]["score_histogram"][5] == len(SIZES)  # the 0.5 and 0.6 scores
  assert tasks["segmentation"]["ignored_pixel_fraction"] == pytest.approx(0.5, abs=0.05)
  assert 1.0 <= tasks["depth"]["range"][0] < tasks["depth"]["range"][1] <= 3.0
  assert sum(tasks["classification"]["class_histogram"].values()) == len(SIZES)
  assert summary["config"]["options"]["num_shards"] == 2
  with open(os.path.join(config["options"]["output_dir"], "dead_letters.jsonl")) as f:
    letters = [json.loads(line) for line in f]
  assert sorted(os.path.basename(d["path"]) for d in letters) == sorted(BAD)


def test_labels_follow_the_recipe_in_stored_coordinates(default_run):
  config, records = default_run
  schema = _schema(config)
  sizes = set()
  for record in records:
    decoded = schema.decode(tf.constant(record))
    height, width = decoded["image"].shape[:2]
    sizes.add((height, width))
    for task in fake_teachers.TASKS:
      assert decoded[task]["present"] and decoded[task]["source"] == b"pseudo"
      assert decoded[task]["model"] == f"fake_{task}@v1".encode()
    probs = decoded["classification"]["probs"].numpy()
    assert probs.sum() == pytest.approx(1.0, abs=1e-5) and probs.max() > 0.5
    boxes = decoded["detection"]["boxes"].numpy()
    np.testing.assert_allclose(boxes, fake_teachers.BOXES[:3])  # >= 0.5, zero area dropped
    np.testing.assert_allclose(decoded["detection"]["scores"].numpy(), [0.9, 0.6, 0.5])
    mask = decoded["segmentation"]["mask"].numpy()
    assert mask.shape == (height, width)
    assert (mask[:, : width // 2 - 1] == 1).all()
    assert (mask[:, width // 2 + 1:] == segmentation.IGNORE_LABEL).all()
    depth = decoded["depth"]["depth"].numpy()
    assert depth.shape == (height, width) and decoded["depth"]["kind"] == b"relative_inverse"
    assert (np.diff(depth, axis=1) >= -1e-3).all()  # the ramp survives the resize
    example = tf.train.Example.FromString(record)
    assert example.features.feature["image/filename"].bytes_list.value[0].endswith(
        (b".png", b".jpeg"))
    assert int(decoded["source_id"].numpy()) > 0
  assert sizes == set(SIZES)


def test_model_garden_decoders_read_the_shards(default_run):
  config, records = default_run
  for record in records:
    decoded = tf_example_decoder.TfExampleDecoder().decode(tf.constant(record))
    assert decoded["groundtruth_boxes"].shape == (3, 4)
    np.testing.assert_array_equal(decoded["groundtruth_classes"].numpy(), [1, 2, 3])
    assert int(decoded["source_id"].numpy()) > 0
    seg = segmentation_input.Decoder().decode(tf.constant(record))
    mask = tf.io.decode_image(seg["image/segmentation/class/encoded"], channels=1)
    assert mask.shape[:2] == (decoded["height"], decoded["width"])
    cls = classification_input.Decoder().decode(tf.constant(record))
    assert 1 <= cls["image/class/label"].numpy() < fake_teachers.NUM_CLASSES
  del config


def test_thresholds_per_task(tmp_path):
  config = _config(tmp_path, _corpus(tmp_path / "corpus"), thresholds={
      "classification": {"top_k": 2}, "detection": {"min_score": 0.55},
      "segmentation": {"min_confidence": 0.35}})
  records = _run(config)
  schema = _schema(config)
  for record in records:
    decoded = schema.decode(tf.constant(record))
    assert np.count_nonzero(decoded["classification"]["probs"].numpy()) == 2
    np.testing.assert_allclose(decoded["detection"]["scores"].numpy(), [0.9, 0.6])
    mask = decoded["segmentation"]["mask"].numpy()
    width = mask.shape[1]
    assert (mask[:, width // 2 + 1:] == 2).all()


def test_unknown_thresholds_and_keys_are_refused(tmp_path):
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  good = [{"task": "detection", "path": teachers["detection"]}]
  with pytest.raises(ValueError, match="min_scor"):
    pseudo_label.resolve_config({"teachers": good, "thresholds": {"detection": {"min_scor": 1}}})
  with pytest.raises(ValueError, match="unknown keys"):
    pseudo_label.resolve_config({"teachers": good, "teacher": []})
  with pytest.raises(ValueError, match="is a detection teacher"):
    pseudo_label.resolve_config({"teachers": [{"task": "depth", "path": teachers["detection"]}]})


def test_per_teacher_join_by_id_gives_the_fused_records(tmp_path, default_run):
  fused_config, fused = default_run
  config = _config(tmp_path, fused_config["options"]["input_pattern"],
                   mode=pseudo_label.PER_TEACHER)
  joined = _run(config)
  assert sorted(joined) == sorted(fused)  # Same bytes: deterministic and joined by id.
  assert _summary(config)["counts"]["balanced"]


def test_ground_truth_overrides_pseudo_labels(tmp_path, tiny_world):
  pattern = os.path.join(tiny_world, "corpus/partial/*.tfrecord")
  inputs = {}
  for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern))):
    example = tf.train.Example.FromString(record.numpy())
    inputs[example.features.feature["image/source_id"].bytes_list.value[0]] = example
  config = _config(tmp_path, pattern, input_format=pseudo_label.TFRECORD)
  records = _run(config)
  assert len(records) == len(inputs)
  kept = 0
  for record in records:
    out = tf.train.Example.FromString(record).features.feature
    source = inputs[out["image/source_id"].bytes_list.value[0]].features.feature
    assert out["image/encoded"] == source["image/encoded"]
    for task in fake_teachers.TASKS:
      key = schema_lib.source_key(task)
      if key in source and source[key].bytes_list.value[0] == b"ground_truth":
        kept += 1
        task_keys = [k for k in source if k.startswith(("image/", "must/"))
                     and k not in ("image/encoded", "image/format", "image/height",
                                   "image/width", "image/source_id", "must/schema_version")]
        for k in _schema(config).tasks[task].feature_spec():
          if k in source:
            assert out[k] == source[k], (task, k)
        assert out[schema_lib.model_key(task)].bytes_list.value[0] == b""
        del task_keys
      else:
        assert out[key].bytes_list.value[0] == b"pseudo"
  assert kept > 0
  summary = _summary(config)
  assert summary["counts"]["balanced"] and summary["counts"]["images_in"] == len(inputs)
  assert sum(t["ground_truth"] for t in summary["tasks"].values()) == kept


# -- The binary: flags, input and output dir ------------------------------------


def _teachers_yaml(tmp_path, batch_size=2) -> str:
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  path = tmp_path / "teachers.yaml"
  path.write_text(yaml.safe_dump({"teachers": [
      {"task": t, "path": p, "batch_size": batch_size} for t, p in teachers.items()]}))
  return str(path)


def _flags(tmp_path, pattern, *extra):
  return ["--runner=DirectRunner", f"--input_pattern={pattern}",
          f"--teachers_config={_teachers_yaml(tmp_path)}", f"--output_dir={tmp_path / 'out'}",
          *extra]


def test_a_rerun_with_another_shard_count_replaces_the_old_shards(tmp_path):
  pattern = _corpus(tmp_path / "corpus")  # 3 of 7 inputs fail: allow them
  out, allow = tmp_path / "out", "--max_failure_fraction=0.5"
  first = pseudo_label.run(_flags(tmp_path, pattern, "--num_shards=3", allow), fake_teachers.load)
  assert len(glob.glob(str(out / "pseudo_labeled-*-of-00003.tfrecord"))) == 3
  with pytest.raises(cli.UserError, match="holds another run's output.*--overwrite"):
    pseudo_label.run(_flags(tmp_path, pattern, "--num_shards=2", allow), fake_teachers.load)
  again = pseudo_label.run(_flags(tmp_path, pattern, "--num_shards=2", "--overwrite", allow),
                           fake_teachers.load)
  shards = sorted(os.path.basename(p) for p in glob.glob(str(out / "pseudo_labeled-*.tfrecord")))
  assert shards == [f"pseudo_labeled-0000{i}-of-00002.tfrecord" for i in range(2)]
  assert again["files"] == sorted(["dead_letters.jsonl", *shards])
  assert len(_read_records(str(out))) == again["counts"]["examples_out"] == \
      first["counts"]["examples_out"]
  assert sorted(os.listdir(out)) == sorted(["dead_letters.jsonl", "summary.json", *shards])


@pytest.mark.parametrize("pattern", ["corpus/*.jpg", "no_such_dir/image.png"])
def test_input_matching_no_file_stops_before_any_work(tmp_path, pattern):
  (tmp_path / "corpus").mkdir()
  with pytest.raises(cli.UserError, match=f"--input_pattern .*{re.escape(pattern)}: matches no file"):
    pseudo_label.run(_flags(tmp_path, str(tmp_path / pattern)), fake_teachers.load)
  assert not (tmp_path / "out").exists()


def test_unknown_flags_stop_and_beams_own_options_pass(tmp_path):
  for typo in ("--max_pixel=5", "--min_scor=0.3"):
    with pytest.raises(cli.UserError, match=f"unknown flags.*{typo}"):
      common.make_options(pseudo_label.PseudoLabelOptions, ["--input_pattern=x", typo])
  options = common.make_options(pseudo_label.PseudoLabelOptions, [
      "--runner=DirectRunner", "--direct_num_workers=2", "--temp_location=/tmp/t",
      "--direct_running_mode=multi_processing", "--max_pixels=5"])
  assert options.view_as(pseudo_label.PseudoLabelOptions).max_pixels == 5


def test_a_bad_batch_size_is_named_with_its_file_and_key(tmp_path):
  path = tmp_path / "teachers.yaml"
  path.write_text(yaml.safe_dump({"teachers": [
      {"task": "depth", "path": "x", "batch_size": "big"}]}))
  with pytest.raises(configs.ConfigError,
                     match=f"{path}: teachers\\[0\\].batch_size must be int, got 'big'"):
    pseudo_label.load_config(str(path))


def test_main_gives_one_line_and_exit_code_2_for_a_user_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as stopped:
    pseudo_label.main(_flags(tmp_path, str(tmp_path / "none/*.png")))
  assert stopped.value.code == cli.USER_ERROR
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("beam_pipelines.pseudo_label: error: --input_pattern")


def test_threshold_types_are_checked_at_load(tmp_path):
  teachers = fake_teachers.write(str(tmp_path / "teachers"))
  good = [{"task": t, "path": p} for t, p in teachers.items()]
  with pytest.raises(ValueError, match=r"thresholds\.detection\.min_score must be float, got 'high'"):
    pseudo_label.resolve_config({"teachers": good, "thresholds": {"detection": {"min_score": "high"}}})
  with pytest.raises(ValueError, match=r"classification\.top_k must be int \| None"):
    pseudo_label.resolve_config({"teachers": good, "thresholds": {"classification": {"top_k": "many"}}})
  config = pseudo_label.resolve_config({"teachers": good, "thresholds": {
      "detection": {"min_score": 1}, "classification": {"top_k": None}}})
  assert config["thresholds"]["detection"] == {"min_score": 1}


def _run_binary(tmp_path, pattern, *flags):
  return pseudo_label.run(_flags(tmp_path, pattern, *flags), fake_teachers.load)


def test_failures_over_the_budget_exit_non_zero_after_writing_the_summary(tmp_path):
  pattern = _corpus(tmp_path / "corpus")  # 3 of 7 inputs fail
  with pytest.raises(cli.JobFailed, match=r"^3 of 7 inputs failed \(42\.9% > --max_failure_fraction "
                     r"0\.05\); top reasons: .*not_an_image: 1"):
    _run_binary(tmp_path, pattern)
  with open(tmp_path / "out" / "summary.json") as f:
    assert json.load(f)["counts"]["dead_letters"] == 3
  assert len((tmp_path / "out" / "dead_letters.jsonl").read_text().splitlines()) == 3
  summary = _run_binary(tmp_path, pattern, "--max_failure_fraction=0.5", "--overwrite")
  assert summary["counts"]["examples_out"] == len(SIZES)


def test_ground_truth_of_tasks_without_a_teacher_passes_through(tmp_path, tiny_world):
  pattern = os.path.join(tiny_world, "transfer/train-*.tfrecord")  # every task the world labels
  inputs = {}
  for record in tf.data.TFRecordDataset(sorted(glob.glob(pattern))):
    example = tf.train.Example.FromString(record.numpy())
    inputs[example.features.feature["image/source_id"].bytes_list.value[0]] = example
  teachers = fake_teachers.write(str(tmp_path / "teachers"), tasks=fake_teachers.TASKS[:1])
  config = pseudo_label.resolve_config(
      {"teachers": [{"task": t, "path": p, "batch_size": 2} for t, p in teachers.items()]})
  config["options"] = {"input_pattern": pattern, "input_format": pseudo_label.TFRECORD,
                       "output_dir": str(tmp_path / "out"), "num_shards": 1,
                       "max_pixels": 1_000_000, "inference_mode": pseudo_label.FUSED}
  records = _run(config)
  assert len(records) == len(inputs)
  passed = set()
  for record in records:
    out = tf.train.Example.FromString(record).features.feature
    source = inputs[out["image/source_id"].bytes_list.value[0]].features.feature
    for key, value in source.items():
      if key != "image/filename":
        assert out[key] == value, key  # every label of the input, teacher or not
    passed |= {k.split("/")[1] for k in source if k.startswith("must/") and k.endswith("/source")}
  assert len(passed) > len(fake_teachers.TASKS)  # the transfer task's labels too
  tasks = _summary(config)["tasks"]
  assert set(tasks) == passed
  assert all(t["ground_truth"] == len(inputs) for t in tasks.values())


def test_identical_content_at_several_paths_is_one_record_with_every_path(tmp_path):
  pattern = _corpus(tmp_path / "corpus")
  copies = tmp_path / "corpus" / "part-001"
  os.makedirs(copies)
  original = tmp_path / "corpus" / "part-000" / "0.png"
  for name in ("a.png", "b.png"):
    (copies / name).write_bytes(original.read_bytes())
  config = _config(tmp_path, pattern)
  records = _run(config)
  assert len(records) == len(SIZES)
  ids = [tf.train.Example.FromString(r).features.feature["image/source_id"].bytes_list.value[0]
         for r in records]
  assert len(set(ids)) == len(ids)
  paths = [list(tf.train.Example.FromString(r).features.feature[
      pseudo_label.SOURCE_PATHS_KEY].bytes_list.value) for r in records]
  assert sorted(p for p in paths if p) == [sorted(
      str(p).encode() for p in (original, copies / "a.png", copies / "b.png"))]
  counts = _summary(config)["counts"]
  assert counts == {"images_in": len(SIZES) + len(BAD) + 2, "examples_out": len(SIZES),
                    "dead_letters": len(BAD), "duplicates": 2, "balanced": True}
  assert sum(_summary(config)["tasks"]["classification"]["class_histogram"].values()) == len(SIZES)


def _segmentation_outputs(seed: int, size=(16, 16)) -> dict:
  """A segmentation teacher's served outputs: random classes and confidences."""
  rng = np.random.default_rng(seed)
  return {"classes": rng.integers(0, fake_teachers.NUM_CLASSES, size).astype(np.int32),
          "confidence": rng.uniform(0.2, 1.0, size).astype(np.float32)}


@pytest.mark.parametrize("image_size", [(37, 53), (64, 80), (8, 8)])
def test_segmentation_labels_take_the_nearest_teacher_pixel(image_size):
  task = segmentation.Segmentation(fake_teachers.NUM_CLASSES)
  outputs = _segmentation_outputs(sum(image_size))
  teacher_size = outputs["classes"].shape
  kept = inference.resize_outputs(outputs, teacher_size, image_size,
                                  keep=task.outputs_at_teacher_size)
  assert kept["classes"].shape == teacher_size  # never expanded before labeling
  mask = task.pseudo_label(kept, image_size, min_confidence=0.6).mask
  assert mask.shape == image_size
  # The teacher pixel whose area holds each image pixel's centre.
  rows, cols = ((2 * np.arange(n) + 1) * t // (2 * n) for n, t in zip(image_size, teacher_size))
  expected = outputs["classes"][rows][:, cols].astype(np.uint8)
  expected[outputs["confidence"][rows][:, cols] < 0.6] = segmentation.IGNORE_LABEL
  np.testing.assert_array_equal(mask, expected)


def test_labeling_memory_does_not_hold_probabilities_at_image_size():
  height, width, classes = 1500, 2000, fake_teachers.NUM_CLASSES
  config = {"task_params": {"segmentation": {"num_classes": classes}}, "thresholds": {},
            "teachers": [{"task": "segmentation", "name": "fake", "version": "v1",
                          "input_size": [16, 16]}]}
  make = pseudo_label.MakeExamplesFn(config)
  make.setup()
  image = np.zeros((height, width, 3), np.uint8)
  element = decode.Decoded("1", "x.png", image, b"png bytes", "png")
  tracemalloc.start()
  _, (_, record, _) = next(iter(make.process((element, {"segmentation": _segmentation_outputs(0)}))))
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert record
  assert peak < height * width * classes * 4 / 4  # a float32 [H, W, C] is four times this


PAPER_TASKS = ("classification", "detection", "segmentation", "depth")


@pytest.mark.parametrize("path", sorted(
    str(p) for p in (pathlib.Path(__file__).parents[2] / "configs/pipelines").glob("*.yaml")))
def test_shipped_teachers_configs_resolve(path):
  """Each shipped teachers config lists every task once, with thresholds it takes; a
  student's export (round 2) serves every task from one path."""
  def metadata(model_dir):
    name = os.path.basename(os.path.dirname(model_dir))
    if name == "student":
      return serving.TeacherMetadata(tasks={t: {} if t == "depth" else {"num_classes": 11}
                                            for t in PAPER_TASKS})
    return serving.TeacherMetadata(task=name, num_classes=None if name == "depth" else 11)
  config = pseudo_label.load_config(path, metadata_fn=metadata)
  assert sorted(t["task"] for t in config["teachers"]) == sorted(PAPER_TASKS)
