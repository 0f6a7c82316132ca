"""Tests for the procedural scene renderer (`must.world.scene`)."""
import dataclasses

import numpy as np
import pytest

from must.world import scene as scene_lib

NUM_SCENES = 200
K = len(scene_lib.CATEGORIES)


@pytest.fixture(scope="module")
def scenes() -> list[scene_lib.Scene]:
  return [scene_lib.render_scene(scene_lib.scene_rng(0, "test", i)) for i in range(NUM_SCENES)]


def _visible_areas(scene: scene_lib.Scene) -> np.ndarray:
  """Visible pixels per object; index i <-> instance id i + 1."""
  n = len(scene.silhouette_areas)
  return np.bincount(scene.instances.ravel(), minlength=n + 1)[1:]


def _ranks(x) -> np.ndarray:
  return np.argsort(np.argsort(np.asarray(x)))


def _nearest_centroid_accuracy(features, labels) -> float:
  """Trains on the first half, scores on the second half."""
  features, labels = np.asarray(features, np.float64), np.asarray(labels)
  half = len(labels) // 2
  known = np.unique(labels[:half])
  centroids = np.stack([features[:half][labels[:half] == k].mean(0) for k in known])
  dist = ((features[half:, None] - centroids[None]) ** 2).sum(-1)
  return float((known[dist.argmin(1)] == labels[half:]).mean())


def test_categories_and_num_classes():
  assert len(scene_lib.CATEGORIES) >= 10
  assert len(set(scene_lib.CATEGORIES)) == len(scene_lib.CATEGORIES)
  assert scene_lib.NUM_CLASSES == len(scene_lib.CATEGORIES) + 1


def test_same_stream_gives_identical_scene():
  a = scene_lib.render_scene(scene_lib.scene_rng(7, "train", 3))
  b = scene_lib.render_scene(scene_lib.scene_rng(7, "train", 3))
  for field in dataclasses.fields(scene_lib.Scene):
    x, y = getattr(a, field.name), getattr(b, field.name)
    if isinstance(x, np.ndarray):
      assert x.dtype == y.dtype and x.shape == y.shape, field.name
      assert x.tobytes() == y.tobytes(), field.name
    else:
      assert x == y, field.name


def test_different_seeds_splits_and_indices_differ():
  base = scene_lib.render_scene(scene_lib.scene_rng(0, "train", 0)).image
  for seed, split, index in [(1, "train", 0), (0, "eval", 0), (0, "train", 1)]:
    other = scene_lib.render_scene(scene_lib.scene_rng(seed, split, index)).image
    assert not np.array_equal(base, other), (seed, split, index)


def test_scene_rng_streams():
  first = lambda *args: scene_lib.scene_rng(*args).random(4)
  np.testing.assert_array_equal(first(3, "a", 5), first(3, "a", 5))
  assert not np.array_equal(first(3, "a", 5), first(3, "b", 5))
  assert not np.array_equal(first(3, "a", 5), first(3, "a", 6))
  assert not np.array_equal(first(3, "a", 5), first(4, "a", 5))
  with pytest.raises(ValueError):
    scene_lib.scene_rng(-1, "a", 0)


@pytest.mark.parametrize("height,width", [(96, 96), (64, 80)])
def test_shapes_and_dtypes(height, width):
  params = scene_lib.RenderParams(height=height, width=width)
  for i in range(10):
    scene = scene_lib.render_scene(scene_lib.scene_rng(0, "shapes", i), params)
    n = len(scene.boxes)
    assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
    assert scene.image.flags.c_contiguous and scene.normals.flags.c_contiguous
    assert scene.semantic.shape == (height, width) and scene.semantic.dtype == np.uint8
    assert scene.instances.shape == (height, width) and scene.instances.dtype == np.int32
    assert scene.depth.shape == (height, width) and scene.depth.dtype == np.float32
    assert scene.normals.shape == (height, width, 3) and scene.normals.dtype == np.float32
    assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == np.float32
    assert scene.classes.shape == (n,) and scene.classes.dtype == np.int32
    assert scene.box_instance_ids.shape == (n,) and scene.box_instance_ids.dtype == np.int32
    assert isinstance(scene.image_class, int) and 1 <= scene.image_class <= K
    assert scene.semantic.max() <= K
    assert 0 <= scene.instances.min() and scene.instances.max() <= len(scene.silhouette_areas)
    assert n >= 1 and np.all((scene.classes >= 1) & (scene.classes <= K))
    assert np.all(np.diff(scene.box_instance_ids) > 0)
    assert np.all((scene.boxes >= 0) & (scene.boxes <= 1))
    assert np.all(scene.boxes[:, 2] > scene.boxes[:, 0])
    assert np.all(scene.boxes[:, 3] > scene.boxes[:, 1])


def test_boxes_tight_and_consistent_with_masks(scenes):
  min_pixels = scene_lib.RenderParams().min_visible_pixels
  for scene in scenes:
    h, w = scene.semantic.shape
    visible = _visible_areas(scene)
    for box, cls, iid in zip(scene.boxes, scene.classes, scene.box_instance_ids):
      mask = scene.instances == iid
      rows, cols = np.nonzero(mask)
      expected = [rows.min() / h, cols.min() / w, (rows.max() + 1) / h, (cols.max() + 1) / w]
      np.testing.assert_allclose(box, expected, atol=1e-6)
      assert np.all(scene.semantic[mask] == cls)
      assert mask.sum() >= min_pixels
    # Exactly the instances with enough visible pixels are boxed.
    boxed = np.flatnonzero(visible >= min_pixels) + 1
    np.testing.assert_array_equal(scene.box_instance_ids, boxed)


def test_semantic_agrees_with_instances(scenes):
  for scene in scenes:
    np.testing.assert_array_equal(scene.semantic == 0, scene.instances == 0)
    for iid in np.unique(scene.instances[scene.instances > 0]):
      assert len(np.unique(scene.semantic[scene.instances == iid])) == 1


def test_image_class_is_largest_visible_category(scenes):
  for scene in scenes:
    area = np.bincount(scene.semantic.ravel(), minlength=K + 1)[1:]
    assert scene.image_class == int(area.argmax()) + 1
    assert scene.image_class in scene.classes


def test_normals_unit_and_depth_positive(scenes):
  for scene in scenes[:50]:
    np.testing.assert_allclose(np.linalg.norm(scene.normals, axis=-1), 1.0, atol=1e-4)
    assert np.all(np.isfinite(scene.depth)) and scene.depth.min() > 0
    # Surfaces face the camera.
    assert scene.normals[..., 2].min() >= 0


def test_ground_depth_grows_toward_horizon(scenes):
  for scene in scenes[:50]:
    # The ground's normal points up (ny > 0); the far wall's does not.
    ground = (scene.semantic == 0) & (scene.normals[..., 1] > 0.5)
    wall = (scene.semantic == 0) & ~ground
    assert ground[-1].any() and wall[0].any()
    first_ground_row = np.flatnonzero(ground.any(1)).min()
    assert not wall[first_ground_row:].any()  # wall above, ground below
    checked = 0
    for col in range(scene.depth.shape[1]):
      depth = scene.depth[ground[:, col], col]  # top to bottom
      if len(depth) > 1:  # objects may cover a whole column
        assert np.all(np.diff(depth) < 0), col
        checked += 1
    assert checked > scene.depth.shape[1] // 2
    # Ground depth depends on the row only.
    rows = np.flatnonzero(ground.any(1))
    for r in rows[::7]:
      values = scene.depth[r, ground[r]]
      np.testing.assert_allclose(values, values[0], rtol=1e-6)


def test_perspective_far_objects_are_smaller_and_higher(scenes):
  depth, bottom, height = [], [], []
  for scene in scenes:
    for box, iid in zip(scene.boxes, scene.box_instance_ids):
      depth.append(np.median(scene.depth[scene.instances == iid]))
      bottom.append(box[2])
      height.append(box[2] - box[0])
  assert np.corrcoef(_ranks(depth), _ranks(bottom))[0, 1] < -0.6
  assert np.corrcoef(_ranks(depth), _ranks(height))[0, 1] < -0.6


def test_nearer_surfaces_hide_farther_ones(scenes):
  # An instance mostly surrounded by another one is seen in front of it, so it
  # must be nearer there (torus holes excepted: one sees through them).
  torus = scene_lib.CATEGORIES.index("torus") + 1
  checked = 0
  for scene in scenes:
    inst = scene.instances
    for iid in np.unique(inst[inst > 0]):
      mask = inst == iid
      if mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
        continue
      grown = mask.copy()
      grown[1:] |= mask[:-1]
      grown[:-1] |= mask[1:]
      grown[:, 1:] |= mask[:, :-1]
      grown[:, :-1] |= mask[:, 1:]
      ring = grown & ~mask
      ids, counts = np.unique(inst[ring], return_counts=True)
      around = ids[counts.argmax()]
      if around == 0 or counts.max() < 0.6 * counts.sum():
        continue
      if scene.semantic[inst == around][0] == torus:
        continue
      checked += 1
      assert np.median(scene.depth[mask]) < np.median(scene.depth[ring & (inst == around)])
  assert checked > 0


def test_scenes_are_not_trivial(scenes):
  classes = np.concatenate([s.classes for s in scenes])
  assert set(classes.tolist()) == set(range(1, K + 1))
  assert {s.image_class for s in scenes} == set(range(1, K + 1))
  counts = np.bincount([len(s.boxes) for s in scenes])
  assert np.count_nonzero(counts) >= 5
  occluded = shown = tiny = 0
  for scene in scenes:
    visible = _visible_areas(scene)
    occluded += np.count_nonzero((visible > 0) & (visible < scene.silhouette_areas))
    shown += np.count_nonzero(visible > 0)
    tiny += np.count_nonzero((visible > 0) & (visible < 16))
  assert occluded >= 0.1 * shown  # objects hide each other
  assert tiny > 0  # some instances are too small to get a box


def test_colour_does_not_predict_category(scenes):
  colours, labels = [], []
  for scene in scenes:
    for cls, iid in zip(scene.classes, scene.box_instance_ids):
      colours.append(scene.image[scene.instances == iid].mean(0))
      labels.append(cls)
  chance = 1.0 / K
  assert _nearest_centroid_accuracy(colours, labels) < 2 * chance


def test_silhouette_tells_category(scenes):
  # The counterpart of the colour test: shape is what carries the category.
  features, labels = [], []
  for scene in scenes:
    visible = _visible_areas(scene)
    h, w = scene.semantic.shape
    for box, cls, iid in zip(scene.boxes, scene.classes, scene.box_instance_ids):
      if visible[iid - 1] != scene.silhouette_areas[iid - 1]:
        continue  # occluded
      box_h, box_w = (box[2] - box[0]) * h, (box[3] - box[1]) * w
      features.append((visible[iid - 1] / (box_h * box_w), box_w / box_h))
      labels.append(cls)
  assert _nearest_centroid_accuracy(features, labels) > 2.5 / K


def test_noise_free_scene_has_shading_from_normals():
  # Without noise, a sphere-like surface lit from the light direction gets a
  # brightness that varies with its normal: the image is not flat per object.
  params = scene_lib.RenderParams(noise_std_max=0.0)
  scene = scene_lib.render_scene(scene_lib.scene_rng(0, "shading", 0), params)
  main = scene.instances == 1
  luminance = scene.image.astype(np.float32).mean(-1)
  assert luminance[main].std() > 5


def test_render_params_validation():
  hash(scene_lib.RenderParams(min_pitch_degrees=5, max_pitch_degrees=10))
  for bad in [dict(min_objects=0), dict(min_objects=5, max_objects=3),
              dict(min_pitch_degrees=10.0, max_pitch_degrees=5.0), dict(max_pitch_degrees=60.0),
              dict(max_object_size=3.0), dict(min_wall_distance=10.0),
              dict(min_brightness=2.0), dict(noise_std_max=-1.0), dict(height=4)]:
    with pytest.raises(ValueError):
      scene_lib.RenderParams(**bad)


def test_object_count_respects_params():
  params = scene_lib.RenderParams(min_objects=1, max_objects=1)
  for i in range(10):
    scene = scene_lib.render_scene(scene_lib.scene_rng(0, "single", i), params)
    assert len(scene.silhouette_areas) == 1
    np.testing.assert_array_equal(scene.box_instance_ids, [1])
