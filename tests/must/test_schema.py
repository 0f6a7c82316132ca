"""Round trips of the multi-task tf.Example schema, eagerly and inside tf.data."""
import numpy as np
import pytest
import tensorflow as tf

import must  # noqa: F401  (sets the legacy Keras switch before Model Garden loads)
from must import schema
from must import tasks
from must.tasks import classification, depth, detection, segmentation, surface_normals
from official.vision.dataloaders import classification_input
from official.vision.dataloaders import segmentation_input
from official.vision.dataloaders import tf_example_decoder

NUM_CLASSES = 11
H, W = 24, 32
SCHEMA = schema.Schema({
    "classification": {"num_classes": NUM_CLASSES},
    "detection": {"num_classes": NUM_CLASSES},
    "segmentation": {"num_classes": NUM_CLASSES},
    "depth": {},
    "surface_normals": {},
})


def _decode(example: tf.train.Example, mode: str):
  serialized = example.SerializeToString()
  if mode == "eager":
    return tf.nest.map_structure(lambda t: t.numpy(), SCHEMA.decode(serialized))
  dataset = tf.data.Dataset.from_tensors(serialized).map(SCHEMA.decode)
  return next(iter(dataset.as_numpy_iterator()))


def _image(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _labels(seed=0):
  rng = np.random.default_rng(seed)
  probs = rng.dirichlet(np.ones(NUM_CLASSES)).astype(np.float32)
  ymin, xmin = rng.uniform(0, 0.5, (2, 3))
  boxes = np.stack([ymin, xmin, ymin + 0.31, xmin + 0.47], axis=1)
  normals = rng.normal(size=(H, W, 3)).astype(np.float32)
  normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
  mask = rng.integers(0, NUM_CLASSES, (H, W)).astype(np.uint8)
  mask[:3] = segmentation.IGNORE_LABEL
  return {
      "classification": classification.ClassificationLabel(probs),
      "detection": detection.DetectionLabel(
          boxes=boxes, classes=np.array([1, 5, 10]), scores=np.array([0.9, 0.6, 0.51]),
          is_crowd=np.array([0, 1, 0])),
      "segmentation": segmentation.SegmentationLabel(mask),
      "depth": depth.DepthLabel(rng.uniform(0.5, 80.0, (H, W)).astype(np.float32), "metric"),
      "surface_normals": surface_normals.SurfaceNormalsLabel(normals),
  }


@pytest.fixture(params=["eager", "tf.data"])
def mode(request):
  return request.param


def test_all_tasks_round_trip(mode):
  image, labels = _image(), _labels()
  out = _decode(SCHEMA.encode(image, labels, image_format="png"), mode)

  np.testing.assert_array_equal(out["image"], image)
  assert out["schema_version"] == schema.SCHEMA_VERSION
  assert out["format"] == b"png"
  for name in SCHEMA.tasks:
    assert out[name]["present"], name
    assert out[name]["source"] == b"ground_truth"

  cls = out["classification"]
  np.testing.assert_array_equal(cls["probs"], labels["classification"].probs)
  assert cls["label"] == np.argmax(labels["classification"].probs)

  det, want = out["detection"], labels["detection"]
  np.testing.assert_allclose(det["boxes"], want.boxes, atol=1e-6)
  np.testing.assert_array_equal(det["classes"], want.classes)
  np.testing.assert_allclose(det["scores"], want.scores, atol=1e-7)
  np.testing.assert_array_equal(det["is_crowd"], want.is_crowd.astype(bool))
  box_areas = (want.boxes[:, 2] - want.boxes[:, 0]) * H * (want.boxes[:, 3] - want.boxes[:, 1]) * W
  np.testing.assert_allclose(det["areas"], box_areas, rtol=1e-5)

  np.testing.assert_array_equal(out["segmentation"]["mask"], labels["segmentation"].mask)

  got_depth = out["depth"]
  codes, scale, shift = depth.quantize(labels["depth"].depth)
  assert got_depth["valid"].all() and got_depth["kind"] == b"metric"
  np.testing.assert_array_equal(got_depth["depth"], depth.dequantize(codes, scale, shift))
  np.testing.assert_array_equal(depth.quantize(got_depth["depth"])[0], codes)
  float32_rounding = 2 * np.spacing(labels["depth"].depth.max())
  assert np.abs(got_depth["depth"] - labels["depth"].depth).max() <= scale / 2 + float32_rounding

  got_normals = out["surface_normals"]
  assert got_normals["valid"].all()
  np.testing.assert_allclose(got_normals["normals"], labels["surface_normals"].normals,
                             atol=1.0 / 32767)
  np.testing.assert_array_equal(surface_normals.quantize(got_normals["normals"]),
                                surface_normals.quantize(labels["surface_normals"].normals))


def test_absent_tasks_decode_to_empty_labels_of_the_right_shape(mode):
  labels = {"detection": detection.DetectionLabel(np.zeros([0, 4]), np.zeros([0]))}
  out = _decode(SCHEMA.encode(_image(), labels), mode)

  assert out["detection"]["present"] and out["detection"]["boxes"].shape == (0, 4)
  assert not out["classification"]["present"]
  assert out["classification"]["label"] == -1 and not out["classification"]["probs"].any()
  assert not out["segmentation"]["present"]
  assert (out["segmentation"]["mask"] == segmentation.IGNORE_LABEL).all()
  assert out["segmentation"]["mask"].shape == (H, W)
  assert not out["depth"]["present"] and not out["depth"]["valid"].any()
  assert out["surface_normals"]["normals"].shape == (H, W, 3)
  assert not out["surface_normals"]["valid"].any()


def test_jpeg_image_keeps_size_and_source_id_is_stable():
  image = _image()
  first = SCHEMA.encode(image, {}, image_format="jpeg")
  second = SCHEMA.encode(image, {}, image_format="jpeg")
  out = _decode(first, "eager")
  assert out["image"].shape == (H, W, 3)
  assert out["format"] == b"jpeg"
  assert out["source_id"] == _decode(second, "eager")["source_id"] != b""
  assert int(out["source_id"]) < 2**60  # Model Garden parses it as an int64 image id.
  named = SCHEMA.encode(image, {}, source_id="1234")
  assert _decode(named, "eager")["source_id"] == b"1234"


def test_provenance_per_task():
  labels = _labels()
  provenance = {name: schema.GROUND_TRUTH_PROVENANCE for name in labels}
  provenance["detection"] = schema.Provenance.pseudo("detection_teacher", "3")
  out = _decode(SCHEMA.encode(_image(), labels, provenance=provenance), "eager")
  assert out["detection"]["source"] == b"pseudo"
  assert out["detection"]["model"] == b"detection_teacher@3"
  assert out["segmentation"]["source"] == b"ground_truth"
  assert out["segmentation"]["model"] == b""
  with pytest.raises(ValueError, match="unknown label source"):
    schema.Provenance("guessed")


def test_soft_label_top_k_keeps_the_most_probable_classes():
  top3 = schema.Schema({"classification": {"num_classes": NUM_CLASSES, "top_k": 3}})
  probs = np.linspace(0.01, 0.2, NUM_CLASSES).astype(np.float32)[::-1].copy()
  example = top3.encode(_image(), {"classification": classification.ClassificationLabel(probs)})
  out = tf.nest.map_structure(lambda t: t.numpy(), top3.decode(example.SerializeToString()))
  want = np.zeros_like(probs)
  want[:3] = probs[:3]
  np.testing.assert_array_equal(out["classification"]["probs"], want)
  assert out["classification"]["label"] == 0


def test_invalid_depth_and_normal_pixels_are_marked():
  labels = _labels()
  labels["depth"].depth[0, :5] = np.nan
  labels["surface_normals"].normals[1, 2] = np.nan
  out = _decode(SCHEMA.encode(_image(), labels), "eager")
  assert not out["depth"]["valid"][0, :5].any() and out["depth"]["valid"][1:].all()
  assert not out["surface_normals"]["valid"][1, 2]
  assert out["surface_normals"]["valid"].sum() == H * W - 1


@pytest.mark.parametrize("task,label,message", [
    ("segmentation", segmentation.SegmentationLabel(np.zeros([5, 5], np.uint8)), "5x5"),
    ("segmentation", segmentation.SegmentationLabel(np.full([H, W], 11, np.uint8)), "< 11"),
    ("detection", detection.DetectionLabel(np.array([[0.5, 0.5, 0.2, 0.9]]), np.array([1])),
     "normalized"),
    ("detection", detection.DetectionLabel(np.array([[0.1, 0.1, 0.2, 0.2]]), np.array([0])),
     r"\[1, 11\)"),
    ("classification", classification.ClassificationLabel(np.ones([3])), r"\(11,\)"),
    ("depth", depth.DepthLabel(np.ones([H, W]), "disparity"), "unknown depth kind"),
    ("unknown_task", None, "does not have"),
])
def test_bad_labels_are_named(task, label, message):
  with pytest.raises((ValueError, KeyError), match=message):
    SCHEMA.encode(_image(), {task: label})


def test_registry_lists_valid_names_on_a_miss():
  assert {"classification", "detection", "segmentation", "depth",
          "surface_normals"} <= set(tasks.names())
  with pytest.raises(KeyError, match="registered tasks: .*detection"):
    tasks.get("detetcion")


def test_model_garden_detection_decoder_reads_our_boxes():
  labels = _labels()
  example = SCHEMA.encode(_image(), labels, source_id="7007").SerializeToString()
  decoded = tf_example_decoder.TfExampleDecoder().decode(tf.constant(example))
  want = labels["detection"]
  np.testing.assert_allclose(decoded["groundtruth_boxes"].numpy(), want.boxes, atol=1e-6)
  np.testing.assert_array_equal(decoded["groundtruth_classes"].numpy(), want.classes)
  np.testing.assert_array_equal(decoded["groundtruth_is_crowd"].numpy(), want.is_crowd.astype(bool))
  assert decoded["source_id"].numpy() == b"7007"
  assert (decoded["height"].numpy(), decoded["width"].numpy()) == (H, W)
  assert decoded["image"].shape == (H, W, 3)


def test_model_garden_segmentation_decoder_reads_our_mask():
  labels = _labels()
  example = SCHEMA.encode(_image(), labels).SerializeToString()
  decoded = segmentation_input.Decoder().decode(tf.constant(example))
  mask = tf.io.decode_image(decoded["image/segmentation/class/encoded"], channels=1)
  np.testing.assert_array_equal(mask.numpy()[..., 0], labels["segmentation"].mask)
  parser = segmentation_input.Parser(output_size=[H, W], ignore_label=255)
  _, parsed_labels = parser.parse_fn(is_training=False)(decoded)
  np.testing.assert_array_equal(parsed_labels["masks"].numpy()[..., 0],
                                labels["segmentation"].mask)


def test_model_garden_classification_decoder_reads_our_label():
  labels = _labels()
  example = SCHEMA.encode(_image(), labels).SerializeToString()
  decoded = classification_input.Decoder().decode(tf.constant(example))
  assert decoded["image/class/label"].numpy() == np.argmax(labels["classification"].probs)
  image = tf.io.decode_image(decoded["image/encoded"], channels=3)
  assert image.shape == (H, W, 3)
