"""must.data.convert: COCO, image folders and RGB-D pairs round-trip through the schema."""
import glob
import io
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_lib
import pytest
import tensorflow as tf

from must import cli
from must import schema as schema_lib
from must.data import converters
from must.tasks import classification
from must.tasks import depth
from must.tasks import detection
from must.tasks import segmentation
from must.world import writer
from official.core import exp_factory
from official.core import task_factory
from teachers import detection as detection_teacher

DET, SEG = detection.Detection.name, segmentation.Segmentation.name
CLS, DEPTH = classification.Classification.name, depth.Depth.name
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                   {"id": 18, "name": "dog"}]
CLASS_OF = {1: 1, 3: 2, 18: 3}


def _save(path, array, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format=fmt)


def _noise(rng, height, width, channels=3):
  shape = (height, width, channels) if channels > 1 else (height, width)
  return rng.integers(0, 256, shape, dtype=np.uint8)


def _records(output_dir, split):
  paths = sorted(glob.glob(os.path.join(output_dir, f"{split}-*.tfrecord")))
  return [r.numpy() for r in tf.data.TFRecordDataset(paths)]


def _decoded(output_dir, split, metadata):
  schema = schema_lib.Schema(metadata["task_params"])
  return [tf.nest.map_structure(lambda t: t.numpy(), schema.decode(r))
          for r in _records(output_dir, split)]


def _rect_rle(height, width, y0, y1, x0, x1, compressed):
  binary = np.zeros([height, width], np.uint8)
  binary[y0:y1, x0:x1] = 1
  rle = mask_lib.encode(np.asfortranarray(binary))
  if compressed:
    return binary, {"size": rle["size"], "counts": rle["counts"].decode()}
  # Uncompressed RLE: run lengths in column-major order, starting with zeros.
  flat = binary.ravel(order="F")
  changes = np.flatnonzero(np.diff(flat)) + 1
  runs = np.diff(np.concatenate([[0], changes, [flat.size]]))
  counts = ([] if flat[0] == 0 else [0]) + runs.tolist()
  return binary, {"size": [height, width], "counts": counts}


@pytest.fixture
def coco_files(tmp_path):
  """Five images of mixed sizes (one file missing): polygons, RLEs, a crowd, bad boxes."""
  rng = np.random.default_rng(0)
  images_dir = tmp_path / "images"
  sizes = {1: (48, 64, "a.jpg"), 2: (80, 48, "b.png"), 3: (100, 100, "c.jpg"),
           4: (40, 80, "d.png"), 5: (30, 30, "missing.jpg")}
  for image_id, (h, w, name) in sizes.items():
    if image_id != 5:
      _save(str(images_dir / name), _noise(rng, h, w), "JPEG" if name.endswith("jpg") else "PNG")
  crowd_mask, crowd_rle = _rect_rle(48, 64, 5, 15, 40, 50, compressed=False)
  person_mask, person_rle = _rect_rle(100, 100, 20, 60, 30, 50, compressed=True)
  annotations = [
      {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 400.0,
       "bbox": [10, 10, 20, 20], "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
      {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 100.0,
       "bbox": [40, 5, 10, 10], "segmentation": crowd_rle},
      {"id": 20, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 300.0,
       "bbox": [5, 50, 20, 25], "segmentation": [[5, 50, 25, 50, 25, 75, 5, 75]]},
      {"id": 22, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 16.0,
       "bbox": [1, 1, 4, 4], "segmentation": []},  # a box without a mask
      {"id": 21, "image_id": 2, "category_id": 18, "iscrowd": 0, "area": 10.0,
       "bbox": [40, 70, 20, 20], "segmentation": []},  # past the right edge
      {"id": 30, "image_id": 3, "category_id": 1, "iscrowd": 0, "area": 800.0,
       "bbox": [30, 20, 20, 40], "segmentation": person_rle},
      {"id": 31, "image_id": 3, "category_id": 3, "iscrowd": 0, "area": 10.0,
       "bbox": [-5, 10, 20, 20], "segmentation": []},  # left of the image
      {"id": 50, "image_id": 5, "category_id": 1, "iscrowd": 0, "area": 4.0,
       "bbox": [1, 1, 2, 2], "segmentation": []},
  ]
  data = {"images": [{"id": i, "file_name": n, "height": h, "width": w}
                     for i, (h, w, n) in sizes.items()],
          "annotations": annotations, "categories": COCO_CATEGORIES}
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(data))
  return {"json": str(path), "images": str(images_dir), "data": data,
          "masks": {11: crowd_mask, 30: person_mask}}


def _convert_coco(coco_files, output_dir, segmentation_source="", **kwargs):
  plan = converters.plan_coco(
      {"train": converters.CocoSplit(coco_files["json"], coco_files["images"])},
      segmentation_source)
  return converters.write_plan(plan, str(output_dir), examples_per_shard=2,
                               progress=lambda line: None, **kwargs)


def test_coco_round_trip_boxes_classes_and_counts(coco_files, tmp_path):
  out = tmp_path / "out"
  metadata = _convert_coco(coco_files, out)
  assert writer.load_metadata(str(out)) == metadata
  assert metadata["categories"] == ["background", "person", "car", "dog"]
  assert metadata["category_ids"] == [0, 1, 3, 18]
  assert metadata["task_params"] == {DET: {"num_classes": 4}}
  assert metadata["source_format"] == "coco"
  assert sorted(os.listdir(out)) == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)] + [
      "world.json"]
  counts = metadata["convert"]["counts"]["train"]
  assert counts["images"] == 5 and counts["examples"] == 4
  assert counts["skipped"] == {converters.MISSING_IMAGE: 1}
  assert "missing.jpg" in counts["skipped_files"][converters.MISSING_IMAGE][0]
  assert {k: counts["annotations"][k] for k in ("in", "boxes", "skipped", "masks_skipped")} == {
      "in": 7, "boxes": 5, "skipped": {converters.BOX_OUTSIDE_IMAGE: 2}, "masks_skipped": {}}
  assert any("annotation 31" in t for t in
             counts["annotations"]["skipped_examples"][converters.BOX_OUTSIDE_IMAGE])
  assert metadata["convert"]["balanced"]
  assert metadata["splits"]["train"]["count"] == 4
  assert glob.glob(metadata["splits"]["train"]["pattern"])

  by_id = {int(d["source_id"]): d for d in _decoded(str(out), "train", metadata)}
  assert sorted(by_id) == [1, 2, 3, 4]
  images = {i["id"]: i for i in coco_files["data"]["images"]}
  for image_id, decoded in by_id.items():
    height, width = images[image_id]["height"], images[image_id]["width"]
    assert decoded["image"].shape == (height, width, 3)  # original size, no resizing
    on_disk = open(os.path.join(coco_files["images"], images[image_id]["file_name"]), "rb").read()
    example = tf.train.Example.FromString(
        [r for r in _records(str(out), "train")
         if tf.train.Example.FromString(r).features.feature["image/source_id"].bytes_list
         .value[0] == str(image_id).encode()][0])
    assert example.features.feature["image/encoded"].bytes_list.value[0] == on_disk
    expected = [a for a in coco_files["data"]["annotations"]
                if a["image_id"] == image_id and a["id"] not in (21, 31)]
    label = decoded[DET]
    pixels = label["boxes"] * [height, width, height, width]
    want = [[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3], a["bbox"][0] + a["bbox"][2]]
            for a in expected]
    np.testing.assert_allclose(pixels, np.reshape(want, (-1, 4)), atol=1e-4)
    assert label["classes"].tolist() == [CLASS_OF[a["category_id"]] for a in expected]
    assert label["is_crowd"].tolist() == [bool(a["iscrowd"]) for a in expected]
    np.testing.assert_allclose(label["areas"], [a["area"] for a in expected])
  assert by_id[4][DET]["boxes"].shape == (0, 4)


def test_coco_instance_masks_become_semantic_classes(coco_files, tmp_path):
  metadata = _convert_coco(coco_files, tmp_path / "out", converters.INSTANCES)
  assert metadata["task_params"][SEG] == {"num_classes": 4}
  annotations = metadata["convert"]["counts"]["train"]["annotations"]
  assert annotations["boxes"] == 5 and annotations["masks_skipped"] == {converters.NO_MASK: 1}
  assert "annotation 22" in annotations["masks_skipped_examples"][converters.NO_MASK][0]
  by_id = {int(d["source_id"]): d for d in _decoded(str(tmp_path / "out"), "train", metadata)}
  first = by_id[1][SEG]["mask"]
  assert first.shape == (48, 64)
  assert first[20, 20] == CLASS_OF[3] and first[40, 5] == 0  # polygon; background
  np.testing.assert_array_equal(first[5:15, 40:50], CLASS_OF[1])  # the crowd's RLE
  third = by_id[3][SEG]["mask"]
  np.testing.assert_array_equal(third == CLASS_OF[1], coco_files["masks"][30].astype(bool))
  assert by_id[2][SEG]["mask"][60, 15] == CLASS_OF[18] and by_id[2][SEG]["mask"][2, 2] == 0
  assert set(np.unique(by_id[4][SEG]["mask"])) == {0}


def test_coco_panoptic_pngs_give_classes_and_void(coco_files, tmp_path):
  panoptic_dir = tmp_path / "panoptic"
  segments, annotations = {}, []
  for image in coco_files["data"]["images"][:4]:
    h, w = image["height"], image["width"]
    ids = np.zeros([h, w, 3], np.uint8)
    ids[: h // 2, :, 1] = 2          # segment 512: sky (stuff)
    ids[h // 2:, : w // 2, 0] = 7    # segment 7: a person; the rest is void
    name = f"{image['id']}.png"
    _save(str(panoptic_dir / name), ids, "PNG")
    annotations.append({"image_id": image["id"], "file_name": name, "segments_info": [
        {"id": 512, "category_id": 184, "iscrowd": 0}, {"id": 7, "category_id": 1, "iscrowd": 0}]})
    segments[image["id"]] = (h, w)
  panoptic_json = tmp_path / "panoptic.json"
  panoptic_json.write_text(json.dumps({
      "annotations": annotations,
      "categories": [{"id": 1, "name": "person", "isthing": 1},
                     {"id": 184, "name": "sky", "isthing": 0}]}))
  plan = converters.plan_coco({"train": converters.CocoSplit(
      coco_files["json"], coco_files["images"], str(panoptic_json), str(panoptic_dir))},
      converters.PANOPTIC)
  metadata = converters.write_plan(plan, str(tmp_path / "out"), progress=lambda line: None)
  assert metadata["category_ids"] == [0, 1, 3, 18, 184]
  assert metadata["task_params"] == {DET: {"num_classes": 5}, SEG: {"num_classes": 5}}
  for decoded in _decoded(str(tmp_path / "out"), "train", metadata):
    h, w = segments[int(decoded["source_id"])]
    mask = decoded[SEG]["mask"]
    assert mask.shape == (h, w)
    assert (mask[: h // 2] == 4).all() and (mask[h // 2:, : w // 2] == 1).all()
    assert (mask[h // 2:, w // 2:] == segmentation.IGNORE_LABEL).all()


def test_coco_shards_feed_the_detection_teachers_input(coco_files, tmp_path):
  metadata = _convert_coco(coco_files, tmp_path / "out")
  config = exp_factory.get_exp_config(detection_teacher.TINY_EXPERIMENT)
  config.override({"task": {
      "model": {"num_classes": metadata["task_params"][DET]["num_classes"],
                "input_size": [64, 64, 3]},
      "validation_data": {"input_path": metadata["splits"]["train"]["pattern"],
                          "global_batch_size": 4}}})
  task = task_factory.get_task(config.task)
  images, labels = next(iter(task.build_inputs(config.task.validation_data)))
  assert images.shape == (4, 64, 64, 3)
  truth = labels["groundtruths"]
  annotations = coco_files["data"]["annotations"]
  for row, source_id in enumerate(truth["source_id"].numpy()):
    want = [a for a in annotations if a["image_id"] == int(source_id) and a["id"] not in (21, 31)]
    n = int(truth["num_detections"][row])
    assert n == len(want)
    boxes = truth["boxes"][row, :n].numpy()  # pixels of the original image
    np.testing.assert_allclose(
        boxes, np.reshape([[a["bbox"][1], a["bbox"][0], a["bbox"][1] + a["bbox"][3],
                            a["bbox"][0] + a["bbox"][2]] for a in want], (-1, 4)), atol=1e-3)
    assert truth["classes"][row, :n].numpy().tolist() == [CLASS_OF[a["category_id"]]
                                                          for a in want]


def test_output_dir_is_owned_by_one_run(coco_files, tmp_path):
  out = tmp_path / "out"
  _convert_coco(coco_files, out)
  with pytest.raises(cli.UserError, match="another run's output"):
    _convert_coco(coco_files, out)
  assert _convert_coco(coco_files, out, overwrite=True)["convert"]["balanced"]
  assert not [n for n in os.listdir(out) if n.startswith(".") or n.endswith(".incomplete")]


def test_coco_errors_name_the_file(coco_files, tmp_path):
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"images": []}))
  with pytest.raises(cli.UserError, match="bad.json has no annotations, categories"):
    converters.plan_coco({"train": converters.CocoSplit(str(bad), coco_files["images"])})
  data = dict(coco_files["data"], images=coco_files["data"]["images"] * 2)
  bad.write_text(json.dumps(data))
  with pytest.raises(cli.UserError, match="image id 1 is listed 2 times"):
    converters.plan_coco({"train": converters.CocoSplit(str(bad), coco_files["images"])})
  # An image whose file disagrees with the JSON's size is skipped, naming it.
  data = dict(coco_files["data"], images=[dict(coco_files["data"]["images"][0], width=65)])
  bad.write_text(json.dumps(data))
  with pytest.raises(cli.JobFailed, match="size_mismatch"):
    converters.write_plan(converters.plan_coco(
        {"train": converters.CocoSplit(str(bad), coco_files["images"])}),
        str(tmp_path / "out"), progress=lambda line: None)


def test_folder_classes_sorted_and_bad_files_counted(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "train"
  _save(str(root / "dog" / "1.jpg"), _noise(rng, 30, 40), "JPEG")
  _save(str(root / "cat" / "2.png"), _noise(rng, 50, 20), "PNG")
  _save(str(root / "cat" / "3.png"), _noise(rng, 16, 16, channels=1), "PNG")  # grayscale
  _save(str(root / "ant" / "4.JPG"), _noise(rng, 24, 24), "JPEG")
  (root / "ant" / "broken.jpg").write_bytes(b"not an image")
  (root / "ant" / "notes.txt").write_text("not an input")
  _save(str(tmp_path / "eval" / "cat" / "5.png"), _noise(rng, 8, 12), "PNG")
  plan = converters.plan_folder({"train": str(root), "eval": str(tmp_path / "eval")})
  lines = []
  metadata = converters.write_plan(plan, str(tmp_path / "out"), progress=lines.append)
  assert len(lines) == 2 and "train shard 1/1" in lines[0]
  assert metadata["categories"] == ["ant", "cat", "dog"]
  assert metadata["task_params"] == {CLS: {"num_classes": 3}}
  counts = metadata["convert"]["counts"]
  assert counts["train"]["images"] == 5 and counts["train"]["examples"] == 4
  assert counts["train"]["skipped"] == {"not_an_image": 1}
  assert "broken.jpg" in counts["train"]["skipped_files"]["not_an_image"][0]
  decoded = _decoded(str(tmp_path / "out"), "train", metadata)
  shapes = {(d["image"].shape, int(d[CLS]["label"])) for d in decoded}
  assert shapes == {((24, 24, 3), 0), ((50, 20, 3), 1), ((16, 16, 3), 1), ((30, 40, 3), 2)}
  assert all(d[CLS]["probs"].sum() == 1 for d in decoded)
  (only,) = _decoded(str(tmp_path / "out"), "eval", metadata)
  assert only["image"].shape == (8, 12, 3) and int(only[CLS]["label"]) == 1


def test_rgbd_pairs_png_and_npy_with_invalid_pixels(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "rgbd"
  codes = rng.integers(500, 5000, (20, 30)).astype(np.uint16)
  codes[0, :5] = 0
  _save(str(root / "rgb" / "a.png"), _noise(rng, 20, 30), "PNG")
  (root / "depth").mkdir(parents=True)
  Image.fromarray(codes).save(str(root / "depth" / "a.png"))  # 16-bit PNG
  floats = rng.uniform(0.5, 4.0, (16, 12)).astype(np.float32)
  floats[3, 3], floats[4, 4], floats[5, 5] = np.nan, 0.0, np.inf
  _save(str(root / "rgb" / "b.jpg"), _noise(rng, 16, 12), "JPEG")
  np.save(str(root / "depth" / "b.npy"), floats)
  _save(str(root / "rgb" / "c.png"), _noise(rng, 8, 8), "PNG")  # no depth
  _save(str(root / "rgb" / "d.png"), _noise(rng, 8, 8), "PNG")
  (root / "depth" / "d.npy").write_bytes(b"garbage")
  _save(str(root / "rgb" / "e.png"), _noise(rng, 8, 8), "PNG")
  np.save(str(root / "depth" / "e.npy"), np.ones([9, 8], np.float32))  # wrong size
  with pytest.raises(cli.UserError, match="--depth_scale"):
    converters.plan_rgbd({"train": str(root)})
  plan = converters.plan_rgbd({"train": str(root)}, depth_scale=0.001)
  metadata = converters.write_plan(plan, str(tmp_path / "out"), progress=lambda line: None)
  counts = metadata["convert"]["counts"]["train"]
  assert counts["images"] == 5 and counts["examples"] == 2
  assert counts["skipped"] == {converters.MISSING_DEPTH: 1, converters.UNREADABLE_DEPTH: 1,
                               converters.DEPTH_SIZE_MISMATCH: 1}
  assert "d.npy" in counts["skipped_files"][converters.UNREADABLE_DEPTH][0]
  assert metadata["task_params"] == {DEPTH: {}} and metadata["depth_scale"] == 0.001
  decoded = {d["image"].shape[:2]: d[DEPTH] for d in
             _decoded(str(tmp_path / "out"), "train", metadata)}
  first, second = decoded[(20, 30)], decoded[(16, 12)]
  assert first["kind"] == b"metric"
  np.testing.assert_array_equal(first["valid"], codes > 0)
  metres = codes * np.float32(0.001)
  tolerance = (metres[codes > 0].max() - metres[codes > 0].min()) / 131068 + 1e-6
  np.testing.assert_allclose(first["depth"][codes > 0], metres[codes > 0], atol=tolerance)
  valid = np.isfinite(floats) & (floats > 0)
  np.testing.assert_array_equal(second["valid"], valid)
  np.testing.assert_allclose(second["depth"][valid], floats[valid], atol=4.0 / 131068 + 1e-6)
  label = depth.Depth().from_decoded(second)
  assert np.isnan(label.depth[3, 3]) and np.isnan(label.depth[4, 4])
