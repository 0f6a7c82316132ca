"""Models of other origins as teachers through an adapter config (`teachers.adapter`)."""
import glob
import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml
from absl import flags
from absl.testing import flagsaver

from beam_pipelines import pseudo_label
from must import configs
from must import schema as schema_lib
from must import serving
from teachers import adapter
from teachers import export
import tf_keras

NUM_CLASSES = 5
INPUT = (24, 24)
SIZES = [(40, 60), (60, 40), (24, 24)]  # (height, width)


def _keras_classifier(path: str) -> tf_keras.Model:
  """A classifier that takes float images in [0, 1] and returns logits."""
  tf_keras.utils.set_random_seed(0)
  inputs = tf_keras.Input([*INPUT, 3], name="pixels")
  x = tf_keras.layers.Conv2D(8, 3, activation="relu")(inputs)
  x = tf_keras.layers.GlobalAveragePooling2D()(x)
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(NUM_CLASSES, name="logits")(x))
  model.save(path)
  return model


def _write_config(tmp_path, **config) -> str:
  path = tmp_path / "adapter.yaml"
  path.write_text(yaml.safe_dump(config))
  return str(path)


def _classifier_config(tmp_path, model_path, **changes) -> str:
  config = {"task": "classification", "num_classes": NUM_CLASSES, "model": model_path,
            "input": {"size": list(INPUT), "dtype": "float32", "range": [0.0, 1.0]},
            "outputs": {"kind": "logits"}, "version": "v7", "experiment": "my_classifier"}
  return _write_config(tmp_path, **{**config, **changes})


def _jpeg(size, seed) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
  return buffer.getvalue()


def _expected_probs(model, encoded: bytes) -> np.ndarray:
  """The model's own prediction on the image resized to its input, in [0, 1]."""
  image = tf.io.decode_jpeg(encoded, channels=3)
  resized = tf.round(tf.image.resize(image, INPUT)) / 255.0
  return tf.nn.softmax(model.predict(resized[None], verbose=0)[0]).numpy()


def test_a_keras_classifier_labels_a_corpus_through_the_pipeline(tmp_path):
  model = _keras_classifier(str(tmp_path / "classifier.keras"))
  config = _classifier_config(tmp_path, str(tmp_path / "classifier.keras"))
  metadata = adapter.export_adapted(config, str(tmp_path / "teacher"))
  assert (metadata["task"], metadata["size_policy"], metadata["format_version"]) == (
      "classification", "resize", serving.FORMAT_VERSION)
  assert metadata["class_names"] == [f"class_{i}" for i in range(NUM_CLASSES)]

  corpus = tmp_path / "corpus"
  corpus.mkdir()
  images = {f"{i}.jpg": _jpeg(size, i) for i, size in enumerate(SIZES)}
  for name, data in images.items():
    (corpus / name).write_bytes(data)
  teachers = tmp_path / "teachers.yaml"
  teachers.write_text(yaml.safe_dump({"teachers": [
      {"task": "classification", "path": str(tmp_path / "teacher"), "batch_size": 2}]}))
  summary = pseudo_label.run([
      "--runner=DirectRunner", f"--input_pattern={corpus}/*.jpg",
      f"--teachers_config={teachers}", f"--output_dir={tmp_path / 'out'}"])
  assert summary["counts"]["examples_out"] == len(SIZES)

  schema = schema_lib.Schema(summary["config"]["task_params"])
  files = sorted(glob.glob(str(tmp_path / "out" / "pseudo_labeled-*.tfrecord")))
  labeled = 0
  for record in tf.data.TFRecordDataset(files):
    example = tf.train.Example.FromString(record.numpy())
    name = os.path.basename(example.features.feature["image/filename"].bytes_list.value[0]
                            .decode())
    decoded = schema.decode(record)
    assert decoded["classification"]["model"] == b"my_classifier@v7"
    np.testing.assert_allclose(decoded["classification"]["probs"].numpy(),
                               _expected_probs(model, images[name]), atol=2e-3)
    labeled += 1
  assert labeled == len(SIZES)


def test_the_cli_exports_an_adapted_model_with_mean_and_stddev(tmp_path, capsys):
  model = _keras_classifier(str(tmp_path / "classifier.h5"))
  config = _classifier_config(tmp_path, str(tmp_path / "classifier.h5"),
                              input={"size": list(INPUT), "range": [0.0, 1.0],
                                     "mean": [0.5], "stddev": [0.25]})
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(adapter_config=config, export_dir=str(tmp_path / "teacher")):
    export.main([])
  assert json.loads(capsys.readouterr().out)["experiment"] == "my_classifier"
  image = np.random.default_rng(1).integers(0, 256, (*INPUT, 3), dtype=np.uint8)
  served = serving.load(str(tmp_path / "teacher")).predict([_png(image)])["probs"][0]
  inputs = (image[None].astype(np.float32) / 255.0 - 0.5) / 0.25
  np.testing.assert_allclose(served, tf.nn.softmax(model.predict(inputs, verbose=0)[0]),
                             atol=1e-4)


class _Depth(tf.Module):
  """A SavedModel of metric depth: 2 + the red channel, at half resolution."""

  @tf.function(input_signature=[tf.TensorSpec([None, 16, 32, 3], tf.float32, name="rgb")])
  def serve(self, rgb):
    depth = 2.0 + tf.nn.avg_pool2d(rgb[..., :1], 2, 2, "VALID")
    return {"metric_depth": depth, "aux": tf.reduce_mean(rgb, [1, 2])}


def _png(pixels) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


def test_a_saved_model_of_metric_depth_serves_inverse_depth_over_the_image(tmp_path):
  module = _Depth()
  tf.saved_model.save(module, str(tmp_path / "depth_model"),
                      signatures={"predict": module.serve.get_concrete_function()})
  config = _write_config(tmp_path, task="depth", model=str(tmp_path / "depth_model"),
                         signature="predict",
                         input={"size": [16, 32], "dtype": "float32", "range": [0.0, 1.0]},
                         outputs={"key": "metric_depth", "kind": "metric"})
  metadata = adapter.export_adapted(config, str(tmp_path / "teacher"))
  assert metadata["size_policy"] == "pad"
  teacher = serving.load(str(tmp_path / "teacher"))
  gray = np.full((30, 90, 3), 51, np.uint8)  # red 0.2 in [0, 1]; 1:3, so padded below
  depth = teacher.predict([_png(gray)])["depth"][0]
  assert depth.shape == (16, 32)
  # The map spans the image, not the padding (whose inverse depth is 1 / 2); the
  # bottom rows blend the model's last half-resolution row, half image, half padding.
  np.testing.assert_allclose(depth[:12], 1 / 2.2, rtol=2e-3)
  assert depth.max() < 0.48


class _PixelBoxes(tf.Module):
  """A detector that finds one box, xywh in pixels of its 32x32 input: (8, 4, 16, 8)."""

  @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
  def serve(self, images):
    batch = tf.shape(images)[0]
    return {"box": tf.tile([[[8.0, 4.0, 16.0, 8.0]]], [batch, 1, 1]),
            "score": tf.fill([batch, 1], 0.9), "label": tf.zeros([batch, 1], tf.int64)}


def test_pixel_xywh_boxes_come_back_normalized_to_the_original_image(tmp_path):
  module = _PixelBoxes()
  tf.saved_model.save(module, str(tmp_path / "detector"),
                      signatures={"serving_default": module.serve.get_concrete_function()})
  config = _write_config(tmp_path, task="detection", num_classes=3,
                         model=str(tmp_path / "detector"),
                         input={"size": [32, 32], "dtype": "uint8"},
                         outputs={"boxes": "box", "scores": "score", "classes": "label",
                                  "num_detections": "", "box_format": "xywh",
                                  "box_units": "pixels", "class_offset": 1})
  adapter.export_adapted(config, str(tmp_path / "teacher"))
  outputs = serving.load(str(tmp_path / "teacher")).predict(
      [_png(np.zeros((16, 64, 3), np.uint8))])  # scale 0.5: the image fills the top 8 rows
  # Pixels of the input (y 4..12, x 8..24) / 0.5 -> the image's (8..24, 16..48) of (16, 64).
  np.testing.assert_allclose(outputs["boxes"][0, 0], [0.5, 0.25, 1.0, 0.75], atol=1e-6)
  assert outputs["classes"][0, 0] == 1 and outputs["num_detections"][0] == 1


def test_outputs_that_break_the_declared_contract_fail_at_export_naming_it(tmp_path):
  _keras_classifier(str(tmp_path / "classifier.keras"))
  model = str(tmp_path / "classifier.keras")
  wrong_width = _classifier_config(tmp_path, model, num_classes=NUM_CLASSES + 2)
  with pytest.raises(ValueError, match=f"probs have {NUM_CLASSES} classes, the teacher "
                     f"declares {NUM_CLASSES + 2}"):
    adapter.export_adapted(wrong_width, str(tmp_path / "a"))
  wrong_key = _classifier_config(tmp_path, model, outputs={"key": "scores"})
  with pytest.raises(ValueError, match=r"outputs \['logits'\], not 'scores'"):
    adapter.export_adapted(wrong_key, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("change, message", [
    ({"outputs": {"knd": "logits"}}, "outputs.*'knd' does not exist"),
    ({"input": {"size": [24]}}, r"input.size must be \[height, width\]"),
    ({"input": {"size": [24, 24], "dtype": "float16"}}, "input.dtype 'float16'"),
    ({"task": "edges"}, "task 'edges'; valid"),
    ({"num_classes": None}, "num_classes: classification teachers declare"),
])
def test_a_bad_adapter_config_is_named_with_its_file(tmp_path, change, message):
  config = _classifier_config(tmp_path, str(tmp_path / "m.keras"), **change)
  with pytest.raises((configs.ConfigError, ValueError), match=message) as error:
    adapter.export_adapted(config, str(tmp_path / "teacher"))
  assert config in str(error.value)
