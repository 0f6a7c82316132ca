"""End to end: the real pipeline (`run`, flags and all) over a generated corpus
with a real exported teacher, read back with the schema and Model Garden decoders.

The teacher is Model Garden's classification model (ResNet-10 at width 0.25)
with its initial random weights, checkpointed and exported by
`teachers.export` exactly as a trained one is: the pipeline cannot tell.
"""
import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import yaml

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from beam_pipelines import pseudo_label
from must import configs
from must import schema as schema_lib
import teachers
from teachers import export
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils
from official.vision.dataloaders import classification_input
from official.vision.dataloaders import tf_example_decoder

INPUT_SIZE = 32  # the world's images are 64x64: outputs are mapped back


@pytest.fixture(scope="module")
def classification_teacher(tiny_world, tmp_path_factory) -> str:
  """A random-weight classification teacher exported like a trained one."""
  model_dir = str(tmp_path_factory.mktemp("classification_teacher"))
  params = configs.load(exp_factory.get_exp_config(
      teachers.classification.TINY_EXPERIMENT), params_override={"task": {
          "model": {"input_size": [INPUT_SIZE, INPUT_SIZE, 3]},
          "train_data": {"input_path": f"{tiny_world}/labeled/classification/train-*"},
          "validation_data": {"input_path": f"{tiny_world}/eval/eval-*"}}})
  train_utils.serialize_config(params, model_dir)
  model = task_factory.get_task(params.task, logging_dir=None).build_model()
  tf.train.Checkpoint(model=model).save(os.path.join(model_dir, "ckpt"))
  export_dir = os.path.join(model_dir, "export")
  export.export_teacher(model_dir, export_dir, world_dir=tiny_world, version="random")
  return export_dir


@pytest.mark.slow
def test_pipeline_over_a_corpus_with_bad_files(classification_teacher, tiny_world, tmp_path):
  corpus = tmp_path / "corpus"
  shutil.copytree(os.path.join(tiny_world, "corpus/images"), corpus)
  good = sorted(glob.glob(str(corpus / "*" / "*")))
  (corpus / "part-000" / "empty.jpg").write_bytes(b"")
  (corpus / "part-000" / "README.txt").write_bytes(b"not an image")
  data = open(good[0], "rb").read()
  (corpus / "part-001" / "truncated.jpg").write_bytes(data[: len(data) // 3])
  config_path = tmp_path / "teachers.yaml"
  config_path.write_text(yaml.safe_dump({
      "teachers": [{"task": "classification", "path": classification_teacher,
                    "batch_size": 4}],
      "thresholds": {"classification": {"top_k": 3}}}))
  output_dir = tmp_path / "out"

  summary = pseudo_label.run([
      "--runner=DirectRunner", f"--input_pattern={corpus}/*/*",
      f"--teachers_config={config_path}", f"--output_dir={output_dir}", "--num_shards=2",
      "--max_failure_fraction=0.5"])

  assert summary["counts"] == {"images_in": len(good) + 3, "examples_out": len(good),
                               "dead_letters": 3, "duplicates": 0, "balanced": True}
  assert summary["teachers"] == {"classification": "must_classification_teacher@random"}
  shards = sorted(glob.glob(str(output_dir / "pseudo_labeled-*-of-00002.tfrecord")))
  assert len(shards) == 2
  records = [r.numpy() for r in tf.data.TFRecordDataset(shards)]
  assert len(records) == len(good)
  schema = schema_lib.Schema(summary["config"]["task_params"])
  for record in records:
    decoded = schema.decode(tf.constant(record))
    assert decoded["image"].shape == (64, 64, 3)
    label = decoded["classification"]
    assert label["present"] and label["source"] == b"pseudo"
    assert label["model"] == b"must_classification_teacher@random"
    probs = label["probs"].numpy()
    assert np.count_nonzero(probs) == 3 and 0 < probs.sum() <= 1.0 + 1e-5
    assert int(decoded["source_id"].numpy()) > 0
    mg = tf_example_decoder.TfExampleDecoder().decode(tf.constant(record))
    assert (mg["height"], mg["width"]) == (64, 64) and mg["groundtruth_boxes"].shape == (0, 4)
    cls = classification_input.Decoder().decode(tf.constant(record))
    assert cls["image/class/label"].numpy() == np.argmax(probs)
  # Same input and config: the same records.
  again = pseudo_label.run([
      "--runner=DirectRunner", f"--input_pattern={corpus}/*/*",
      f"--teachers_config={config_path}", f"--output_dir={tmp_path / 'again'}",
      "--num_shards=1", "--max_failure_fraction=0.5"])
  assert again["counts"] == summary["counts"]
  rerun = [r.numpy() for r in tf.data.TFRecordDataset(
      glob.glob(str(tmp_path / "again" / "pseudo_labeled-*.tfrecord")))]
  assert sorted(rerun) == sorted(records)
