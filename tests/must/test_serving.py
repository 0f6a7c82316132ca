"""teacher.json (one dataclass, versioned) and checkpoint restores that check what they read."""
import json

import numpy as np
import pytest
import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Keras loads)
import tf_keras
from must import serving


def _student_metadata() -> serving.TeacherMetadata:
  return serving.TeacherMetadata(
      input_size=[64, 64], experiment="must_student", version="step2",
      tasks={"classification": {"num_classes": 11, "class_names": ["bg"] * 11,
                                "loss_weight": 0.5},
             "depth": {"num_classes": None, "class_names": None, "loss_weight": 1.0}},
      train_batch_size=8, train_learning_rate=0.1)


def test_teacher_json_round_trips_and_one_task_is_served_from_a_multi_task_model(tmp_path):
  metadata = _student_metadata()
  metadata.write(str(tmp_path))
  read = serving.TeacherMetadata.read(str(tmp_path))
  assert read == metadata and read.format_version == serving.FORMAT_VERSION
  depth = read.for_task("depth", where="m")
  assert (depth.task, depth.num_classes, depth.tasks, depth.input_size) == (
      "depth", None, None, [64, 64])
  assert read.for_task("classification").class_names == ["bg"] * 11
  with pytest.raises(ValueError, match="multi-task model serving"):
    read.for_task("detection", where="m")


def test_teacher_json_before_the_version_field_is_version_one_and_refused(tmp_path):
  """Version 1 models took uint8 images at their input size: they must be re-exported."""
  (tmp_path / "teacher.json").write_text(json.dumps(
      {"task": "depth", "experiment": "depth_teacher", "version": "step9",
       "input_size": [96, 96], "num_classes": None, "class_names": None,
       "train_batch_size": 16, "train_learning_rate": 0.01, "source": "/ckpt-9"}))
  with pytest.raises(ValueError, match="format_version 1.*re-export"):
    serving.TeacherMetadata.read(str(tmp_path))


@pytest.mark.parametrize("extra, message", [({"format_version": 3}, "format_version 3"),
                                            ({"format_version": serving.FORMAT_VERSION,
                                              "input_sizes": [1, 1]}, "input_sizes")])
def test_teacher_json_of_another_format_fails_naming_the_file(tmp_path, extra, message):
  (tmp_path / "teacher.json").write_text(json.dumps({"task": "depth", **extra}))
  with pytest.raises(ValueError, match=message) as error:
    serving.TeacherMetadata.read(str(tmp_path))
  assert str(tmp_path / "teacher.json") in str(error.value)


def _model(units: int = 3, depth: int = 1) -> tf_keras.Model:
  inputs = tf_keras.Input([4])
  x = inputs
  for _ in range(depth):
    x = tf_keras.layers.Dense(units)(x)
  return tf_keras.Model(inputs, x)


def test_restore_reads_the_model_and_ignores_the_optimizer(tmp_path):
  trained = _model()
  optimizer = tf_keras.optimizers.SGD()
  path = tf.train.Checkpoint(model=trained, optimizer=optimizer).save(str(tmp_path / "ckpt"))
  fresh = _model()
  serving.restore(path, model=fresh)
  for a, b in zip(trained.weights, fresh.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_restore_from_a_checkpoint_of_another_model_fails_naming_it(tmp_path):
  other = tf.train.Checkpoint(backbone=_model()).save(str(tmp_path / "other"))
  with pytest.raises(ValueError, match=f"checkpoint {other} does not hold the model"):
    serving.restore(other, model=_model())
  shallow = tf.train.Checkpoint(model=_model(depth=1)).save(str(tmp_path / "shallow"))
  with pytest.raises(ValueError, match="does not hold the model"):
    serving.restore(shallow, model=_model(depth=2))  # the second layer is not in it
