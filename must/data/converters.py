"""Labeled data sets of common formats -> the project's schema shards plus `world.json`.

A format's `plan_*` function reads the index of every split (annotation JSON,
folder listing) and returns a `Plan`: per split the items to convert (one small
picklable record per image), a converter that turns one item into an `Example`
or raises `Skipped` (naming the file, the image id and why), the category space
and the schema's task params. `write_plan` writes the shards
`<split>-00000-of-0000N.tfrecord` with `must.schema.Schema.encode` and a
`world.json` that every `--world_dir` binary reads (`must.world.writer`), into
an output dir the run owns (`beam_pipelines.run_dir.RunDir`: a lock, a private
staging dir, one publish; a non-empty dir is refused unless `overwrite`).

Formats:
  coco    instances JSON + image dir -> detection boxes (normalized
          ymin, xmin, ymax, xmax), COCO's sparse category ids mapped to classes
          1..K (0 = background; `category_ids[k]` in the metadata maps back);
          crowd boxes kept with `is_crowd` = 1 and areas taken from the JSON,
          as Model Garden's `create_coco_tf_record` does (whose box conversion
          is used). Optionally semantic segmentation from the instance masks
          (polygons, RLE: pycocotools) or from COCO panoptic PNGs (void = 255).
  folder  `root/<class_name>/*.jpg|png|...` -> classification, class ids
          0..K-1 by sorted class name.
  rgbd    `root/rgb/<name>.jpg|png` + `root/depth/<name>.png|npy` -> depth:
          16-bit PNG codes times `depth_scale`, or float .npy; 0, negative and
          non-finite values are pixels without depth.

Images keep their size and bytes (8-bit RGB JPEG or PNG as they are, other
images as lossless PNG; `beam_pipelines.decode.decode_image`). Counts balance
per split: images = examples + skipped (by reason), and for COCO annotations of
converted images = boxes + skipped annotations (by reason).
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import multiprocessing
import os
import re
import time
from typing import Any, Callable, Mapping

import numpy as np
from pycocotools import coco
import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from beam_pipelines import decode
from beam_pipelines import run_dir
from must import cli
from must import image_codec
from must import schema as schema_lib
from must.tasks import classification
from must.tasks import depth
from must.tasks import detection
from must.tasks import segmentation
from must.world import writer

COCO, FOLDER, RGBD = "coco", "folder", "rgbd"
FORMATS = (COCO, FOLDER, RGBD)
INSTANCES, PANOPTIC = "instances", "panoptic"
SEGMENTATION_SOURCES = ("", INSTANCES, PANOPTIC)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEPTH_EXTENSIONS = (".png", ".npy")
DEPTH_KINDS = depth.KINDS
BACKGROUND = "background"
MAX_LISTED = 20  # skipped files listed per reason in the metadata
RGB_SUBDIR = "rgb"
DEPTH_SUBDIR = depth.Depth.name  # the RGB-D layout's folder is named after the task

# Why an image is skipped (beside `beam_pipelines.decode`'s decoding reasons).
MISSING_IMAGE = "missing_image"
SIZE_MISMATCH = "size_mismatch"
MISSING_SEGMENTATION = "missing_segmentation"
UNREADABLE_SEGMENTATION = "unreadable_segmentation"
MISSING_DEPTH = "missing_depth"
UNREADABLE_DEPTH = "unreadable_depth"
DEPTH_SIZE_MISMATCH = "depth_size_mismatch"
NO_VALID_DEPTH = "no_valid_depth"
# Why an annotation is skipped (its image is still converted).
BOX_OUTSIDE_IMAGE = "box_empty_or_outside_image"
UNKNOWN_CATEGORY = "unknown_category"
MALFORMED_ANNOTATION = "malformed_annotation"
# Why an instance mask is left out of the segmentation (its box is kept).
NO_MASK = "no_mask"
MASK_SIZE_MISMATCH = "mask_size_mismatch"


class Skipped(Exception):
  """One image that is not converted: why (a reason constant), which file, details."""

  def __init__(self, reason: str, path: str, detail: str = ""):
    super().__init__(f"{path}: {reason}: {detail}")
    self.reason, self.path, self.detail = reason, path, detail


@dataclasses.dataclass
class Example:
  """One converted image: its pixels, the bytes to store, its labels by task name."""
  image: np.ndarray
  encoded: bytes
  image_format: str
  labels: dict[str, Any]
  source_id: str | None = None
  annotations: int = 0  # annotations read for this image
  annotation_skips: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  mask_skips: list[tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Plan:
  """What `write_plan` writes.

  Attributes:
    format: the source format (one of FORMATS).
    items: split name -> the items of its images, in order.
    converter: picklable; `converter.convert(item)` -> Example or raises Skipped.
    categories: class names by class id.
    task_params: the schema's task params (every split labels these tasks).
    inputs: split name -> what it was read from (for the metadata).
    metadata: format fields of `world.json` (COCO: `category_ids`).
    notes: split name -> counts found while planning (e.g. orphan annotations).
  """
  format: str
  items: dict[str, list]
  converter: Any
  categories: list[str]
  task_params: dict[str, dict]
  inputs: dict[str, Any]
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: dict[str, dict] = dataclasses.field(default_factory=dict)


# -- Reading ------------------------------------------------------------------


def _read(path: str, missing_reason: str, what: str = "") -> bytes:
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError:
    raise Skipped(missing_reason, path, f"{what}the file does not exist") from None
  except (tf.errors.OpError, OSError) as e:
    raise Skipped(decode.UNREADABLE, path, f"{what}{e}") from None


def _decode_image(path: str, what: str = "", apply_exif: bool = False):
  """(rgb, stored bytes, stored format) of an image file, or Skipped."""
  data = _read(path, MISSING_IMAGE, what)
  try:
    return decode.decode_image(data, apply_exif=apply_exif)
  except ValueError as e:
    reason, detail = e.args if len(e.args) == 2 else (decode.TRUNCATED, str(e))
    raise Skipped(reason, path, f"{what}{detail}") from None


def _load_json(path: str, flag: str) -> dict:
  if not tf.io.gfile.exists(path):
    raise cli.UserError(f"{flag} {path} does not exist")
  try:
    with tf.io.gfile.GFile(path) as f:
      data = json.load(f)
  except ValueError as e:
    raise cli.UserError(f"{flag} {path} is not JSON: {e}") from None
  if not isinstance(data, dict):
    raise cli.UserError(f"{flag} {path} holds a {type(data).__name__}, not a COCO object")
  return data


def _require_keys(data: Mapping, keys, path: str, what: str) -> None:
  missing = [k for k in keys if k not in data]
  if missing:
    raise cli.UserError(f"{path} has no {', '.join(missing)}: not a COCO {what} file")


def _listdir(path: str, flag: str) -> list[str]:
  if not tf.io.gfile.isdir(path):
    raise cli.UserError(f"{flag} {path} is not a directory")
  return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def _has_extension(name: str, extensions) -> bool:
  return name.lower().endswith(extensions)


# -- COCO -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CocoSplit:
  """One COCO split: its instances JSON and image dir, optionally panoptic."""
  annotations: str
  images: str
  panoptic_json: str = ""
  panoptic_dir: str = ""


@dataclasses.dataclass
class CocoItem:
  image: dict
  annotations: list
  image_dir: str
  panoptic: dict | None = None
  panoptic_dir: str = ""


def _merge_categories(into: dict[int, str], categories, path: str) -> None:
  for category in categories:
    cid, name = int(category["id"]), str(category.get("name", category["id"]))
    if into.setdefault(cid, name) != name:
      raise cli.UserError(f"{path}: category id {cid} is {name!r} here but {into[cid]!r} in "
                          "another file; the splits must share one category space")


def plan_coco(splits: Mapping[str, CocoSplit], segmentation_source: str = "") -> Plan:
  """Reads COCO instances (and panoptic) JSON files; see the module docstring."""
  if segmentation_source not in SEGMENTATION_SOURCES:
    raise cli.UserError(f"segmentation source {segmentation_source!r}; valid: "
                        f"{', '.join(s for s in SEGMENTATION_SOURCES if s)} or none")
  names: dict[int, str] = {}
  loaded = {}
  for split, spec in splits.items():
    data = _load_json(spec.annotations, "--inputs")
    _require_keys(data, ("images", "annotations", "categories"), spec.annotations, "instances")
    ids = [image["id"] for image in data["images"]]
    duplicates = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
    if duplicates:
      raise cli.UserError(f"{spec.annotations}: image id {duplicates[0]} is listed "
                          f"{ids.count(duplicates[0])} times")
    index = coco.COCO()
    index.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
      index.createIndex()
    _merge_categories(names, data["categories"], spec.annotations)
    panoptic = None
    if segmentation_source == PANOPTIC:
      if not spec.panoptic_json or not spec.panoptic_dir:
        raise cli.UserError(f"split {split}: panoptic segmentation needs --panoptic_json and "
                            "--panoptic_dir for every split")
      panoptic_data = _load_json(spec.panoptic_json, "--panoptic_json")
      _require_keys(panoptic_data, ("annotations", "categories"), spec.panoptic_json, "panoptic")
      _merge_categories(names, panoptic_data["categories"], spec.panoptic_json)
      panoptic = {a["image_id"]: a for a in panoptic_data["annotations"]}
    loaded[split] = (index, panoptic, set(ids))
  category_ids = sorted(names)
  class_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
  num_classes = len(category_ids) + 1
  task_params = {detection.Detection.name: {"num_classes": num_classes}}
  if segmentation_source:
    if num_classes > segmentation.IGNORE_LABEL:
      raise cli.UserError(f"{num_classes} classes do not fit the segmentation label's 8 bits "
                          f"(at most {segmentation.IGNORE_LABEL}, {segmentation.IGNORE_LABEL} "
                          "= ignore)")
    task_params[segmentation.Segmentation.name] = {"num_classes": num_classes}
  items, notes = {}, {}
  for split, (index, panoptic, ids) in loaded.items():
    spec = splits[split]
    items[split] = [
        CocoItem(image, index.imgToAnns.get(image["id"], []), spec.images,
                 None if panoptic is None else panoptic.get(image["id"]), spec.panoptic_dir)
        for image in index.dataset["images"]]
    orphans = sum(1 for a in index.dataset["annotations"] if a.get("image_id") not in ids)
    notes[split] = {"annotations_without_image": orphans}
  return Plan(COCO, items, CocoConverter(class_of, names, segmentation_source),
              [BACKGROUND, *(names[i] for i in category_ids)], task_params,
              {split: dataclasses.asdict(spec) for split, spec in splits.items()},
              {"category_ids": [0, *category_ids], "segmentation_source": segmentation_source},
              notes)


@dataclasses.dataclass
class CocoConverter:
  """One COCO image -> detection (and segmentation) labels in its own pixel frame."""
  class_of: dict[int, int]       # COCO category id -> class id
  names: dict[int, str]          # COCO category id -> name
  segmentation_source: str = ""

  def convert(self, item: CocoItem) -> Example:
    image = item.image
    path = os.path.join(item.image_dir, str(image.get("file_name", "")))
    what = f"image id {image.get('id')}: "
    rgb, encoded, image_format = _decode_image(path, what)
    height, width = rgb.shape[:2]
    if (height, width) != (image.get("height"), image.get("width")):
      raise Skipped(SIZE_MISMATCH, path, f"{what}the file is {width}x{height}, the "
                    f"annotations say {image.get('width')}x{image.get('height')}")
    kept, skips = self._boxes(item, path, height, width)
    boxes = np.array([box for box, _ in kept], np.float32).reshape(-1, 4)
    annotations = [a for _, a in kept]
    labels = {detection.Detection.name: detection.DetectionLabel(
        boxes=boxes,
        classes=np.array([self.class_of[a["category_id"]] for a in annotations], np.int64),
        areas=np.array([float(a["area"]) for a in annotations], np.float32),
        is_crowd=np.array([int(a["iscrowd"]) for a in annotations], np.int64))}
    mask_skips = []
    if self.segmentation_source == INSTANCES:
      mask, mask_skips = self._instance_mask(image, annotations, path)
      labels[segmentation.Segmentation.name] = segmentation.SegmentationLabel(mask)
    elif self.segmentation_source == PANOPTIC:
      mask, mask_skips = self._panoptic_mask(item, path, height, width)
      labels[segmentation.Segmentation.name] = segmentation.SegmentationLabel(mask)
    return Example(rgb, encoded, image_format, labels, source_id=str(image["id"]),
                   annotations=len(item.annotations), annotation_skips=skips,
                   mask_skips=mask_skips)

  def _boxes(self, item: CocoItem, path: str, height: int, width: int):
    """[(yxyx normalized, annotation)] of the valid boxes, [(reason, detail)] of the rest.

    Model Garden's `coco_annotations_to_lists` converts each box (and skips
    empty boxes and boxes past the right or bottom edge); boxes starting left
    of or above the image are skipped too.
    """
    # Imported here: the module defines absl flags (--image_dir, ...) that
    # would otherwise be parsed, and listed, as this binary's own.
    from official.vision.data import create_coco_tf_record  # pylint: disable=g-import-not-at-top
    kept, skips = [], []
    for annotation in item.annotations:
      where = f"annotation {annotation.get('id')} of image {item.image['id']} ({path})"
      if annotation.get("category_id") not in self.class_of:
        skips.append((UNKNOWN_CATEGORY, f"{where}: category_id {annotation.get('category_id')}"))
        continue
      try:
        data, skipped = create_coco_tf_record.coco_annotations_to_lists(
            [annotation], self.names, height, width, include_masks=False)
      except (KeyError, TypeError, ValueError) as e:
        skips.append((MALFORMED_ANNOTATION, f"{where}: {type(e).__name__}: {e}"))
        continue
      if skipped or data["xmin"][0] < 0 or data["ymin"][0] < 0:
        skips.append((BOX_OUTSIDE_IMAGE, f"{where}: bbox {annotation['bbox']} in a "
                      f"{width}x{height} image"))
        continue
      kept.append(([data["ymin"][0], data["xmin"][0], data["ymax"][0], data["xmax"][0]],
                   annotation))
    return kept, skips

  def _instance_mask(self, image: dict, annotations: list, path: str):
    """Class per pixel from the instance masks (pycocotools), smaller objects on top."""
    index = coco.COCO()
    index.imgs = {image["id"]: image}
    mask = np.zeros([image["height"], image["width"]], np.uint8)
    skips = []
    for annotation in sorted(annotations, key=lambda a: -float(a["area"])):
      try:  # a box-only annotation (no or an empty polygon list) fails here
        instance = index.annToMask(annotation)
      except (KeyError, TypeError, ValueError, IndexError) as e:
        skips.append((NO_MASK, f"annotation {annotation.get('id')} of image "
                      f"{image['id']} ({path}): no usable mask ({type(e).__name__}: {e})"))
        continue
      if instance.shape != mask.shape:
        skips.append((MASK_SIZE_MISMATCH, f"annotation {annotation.get('id')} of image "
                      f"{image['id']} ({path}): a {instance.shape[1]}x{instance.shape[0]} mask"))
        continue
      mask[instance.astype(bool)] = self.class_of[annotation["category_id"]]
    return mask, skips

  def _panoptic_mask(self, item: CocoItem, path: str, height: int, width: int):
    """Class per pixel from the panoptic PNG (id = R + 256 G + 256^2 B); void = ignore."""
    what = f"image id {item.image['id']} ({path}): "
    if item.panoptic is None:
      raise Skipped(MISSING_SEGMENTATION, path, f"{what}no panoptic annotation")
    png_path = os.path.join(item.panoptic_dir, str(item.panoptic.get("file_name", "")))
    data = _read(png_path, MISSING_SEGMENTATION, what)
    try:
      rgb = image_codec.decode_png(data)
    except ValueError as e:
      raise Skipped(UNREADABLE_SEGMENTATION, png_path, f"{what}{e}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
      raise Skipped(UNREADABLE_SEGMENTATION, png_path,
                    f"{what}{rgb.dtype} {rgb.shape}, not an 8-bit RGB panoptic PNG")
    if rgb.shape[:2] != (height, width):
      raise Skipped(SIZE_MISMATCH, png_path, f"{what}the panoptic PNG is "
                    f"{rgb.shape[1]}x{rgb.shape[0]}, the image {width}x{height}")
    ids = rgb.astype(np.int32) @ np.array([1, 256, 256 ** 2], np.int32)
    mask = np.full([height, width], segmentation.IGNORE_LABEL, np.uint8)
    skips = []
    for segment in item.panoptic.get("segments_info", []):
      if segment.get("category_id") not in self.class_of:
        skips.append((UNKNOWN_CATEGORY, f"{what}panoptic segment {segment.get('id')}: "
                      f"category_id {segment.get('category_id')}"))
        continue
      mask[ids == segment["id"]] = self.class_of[segment["category_id"]]
    return mask, skips


# -- Image folders ----------------------------------------------------------------


@dataclasses.dataclass
class FolderItem:
  path: str
  class_id: int


def plan_folder(splits: Mapping[str, str]) -> Plan:
  """Lists `root/<class_name>/<image>` per split; classes are the sorted union of names."""
  listed = {}
  for split, root in splits.items():
    classes = [name for name in _listdir(root, "--inputs")
               if tf.io.gfile.isdir(os.path.join(root, name))]
    if not classes:
      raise cli.UserError(f"--inputs {root} has no class folders (root/<class_name>/*.jpg)")
    listed[split] = {name: [f for f in _listdir(os.path.join(root, name), "--inputs")
                            if _has_extension(f, IMAGE_EXTENSIONS)] for name in classes}
  names = sorted(set().union(*listed.values()))
  class_of = {name: k for k, name in enumerate(names)}
  items = {split: [FolderItem(os.path.join(splits[split], name, f), class_of[name])
                   for name, files in per_class.items() for f in files]
           for split, per_class in listed.items()}
  return Plan(FOLDER, items, FolderConverter(len(names)), names,
              {classification.Classification.name: {"num_classes": len(names)}},
              dict(splits))


@dataclasses.dataclass
class FolderConverter:
  num_classes: int

  def convert(self, item: FolderItem) -> Example:
    rgb, encoded, image_format = _decode_image(item.path, apply_exif=True)
    label = classification.ClassificationLabel.one_hot(item.class_id, self.num_classes)
    return Example(rgb, encoded, image_format, {classification.Classification.name: label})


# -- RGB-D pairs ------------------------------------------------------------------


@dataclasses.dataclass
class RgbdItem:
  rgb_path: str
  depth_path: str  # '' when the image has no depth file


def _by_stem(directory: str, extensions) -> dict[str, str]:
  found = {}
  for name in _listdir(directory, "--inputs"):
    if not _has_extension(name, extensions):
      continue
    stem = os.path.splitext(name)[0]
    if stem in found:
      raise cli.UserError(f"{directory} has both {found[stem]} and {name}: one file per name")
    found[stem] = name
  return found


def plan_rgbd(splits: Mapping[str, str], depth_scale: float | None = None,
              kind: str = depth.KINDS[1], rgb_subdir: str = RGB_SUBDIR,
              depth_subdir: str = DEPTH_SUBDIR) -> Plan:
  """Pairs `root/<rgb_subdir>/<name>.*` with `root/<depth_subdir>/<name>.png|npy`."""
  if kind not in depth.KINDS:
    raise cli.UserError(f"depth kind {kind!r}; valid: {', '.join(depth.KINDS)}")
  items, notes = {}, {}
  for split, root in splits.items():
    rgb_dir, depth_dir = os.path.join(root, rgb_subdir), os.path.join(root, depth_subdir)
    rgbs, depths = _by_stem(rgb_dir, IMAGE_EXTENSIONS), _by_stem(depth_dir, DEPTH_EXTENSIONS)
    if depth_scale is None and any(_has_extension(n, (".png",)) for n in depths.values()):
      raise cli.UserError(f"{depth_dir} holds PNG depth: pass --depth_scale, the depth of one "
                          "code (e.g. 0.001 for millimetres)")
    items[split] = [RgbdItem(os.path.join(rgb_dir, name),
                             os.path.join(depth_dir, depths[stem]) if stem in depths else "")
                    for stem, name in rgbs.items()]
    notes[split] = {"depth_files_without_image": len(depths.keys() - rgbs.keys())}
  return Plan(RGBD, items, RgbdConverter(depth_scale, kind), [], {depth.Depth.name: {}},
              dict(splits), {"depth_scale": depth_scale, "depth_kind": kind}, notes)


@dataclasses.dataclass
class RgbdConverter:
  depth_scale: float | None
  kind: str

  def _values(self, path: str) -> np.ndarray:
    data = _read(path, MISSING_DEPTH)
    try:
      if _has_extension(path, (".npy",)):
        values = np.load(io.BytesIO(data), allow_pickle=False)
        if not np.issubdtype(values.dtype, np.number):
          raise ValueError(f"a {values.dtype} array, not numbers")
        values = values.astype(np.float32)
      else:
        codes = image_codec.decode_png(data)
        if codes.dtype not in (np.uint8, np.uint16):
          raise ValueError(f"{codes.dtype} codes")
        values = codes.astype(np.float32) * np.float32(self.depth_scale)
    except (ValueError, OSError, EOFError) as e:
      raise Skipped(UNREADABLE_DEPTH, path, str(e)) from None
    values = values[..., 0] if values.ndim == 3 and values.shape[2] == 1 else values
    if values.ndim != 2:
      raise Skipped(UNREADABLE_DEPTH, path, f"shape {values.shape}, not [H, W]")
    return values

  def convert(self, item: RgbdItem) -> Example:
    rgb, encoded, image_format = _decode_image(item.rgb_path)
    if not item.depth_path:
      raise Skipped(MISSING_DEPTH, item.rgb_path, "no depth file of the same name")
    values = self._values(item.depth_path)
    if values.shape != rgb.shape[:2]:
      raise Skipped(DEPTH_SIZE_MISMATCH, item.depth_path,
                    f"{values.shape[1]}x{values.shape[0]} depth for the "
                    f"{rgb.shape[1]}x{rgb.shape[0]} image {item.rgb_path}")
    with np.errstate(invalid="ignore"):
      valid = np.isfinite(values) & (values > 0)
    if not valid.any():
      raise Skipped(NO_VALID_DEPTH, item.depth_path, "every pixel is 0, negative or not finite")
    label = depth.DepthLabel(np.where(valid, values, np.float32(np.nan)), kind=self.kind)
    return Example(rgb, encoded, image_format, {depth.Depth.name: label})


# -- Writing ----------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
  split: str
  shard: int
  num_shards: int
  items: list


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def _new_counts() -> dict:
  return {"images": 0, "examples": 0, "skipped": collections.Counter(),
          "skipped_files": collections.defaultdict(list), "annotations": 0, "boxes": 0,
          "annotations_skipped": collections.Counter(),
          "skipped_annotations": collections.defaultdict(list),
          "masks_skipped": collections.Counter(),
          "skipped_masks": collections.defaultdict(list)}


def _note(listing: dict, reason: str, text: str) -> None:
  if len(listing[reason]) < MAX_LISTED:
    listing[reason].append(text)


def _write_shard(converter, task_params: dict, staging: str, job: _Job) -> tuple[_Job, dict]:
  """Converts and writes one shard (as `.incomplete`, then renamed); returns its counts."""
  schema = schema_lib.Schema(task_params)
  box_task = detection.Detection.name
  counts = _new_counts()
  path = os.path.join(staging, shard_name(job.split, job.shard, job.num_shards))
  with tf.io.TFRecordWriter(path + ".incomplete") as records:
    for item in job.items:
      counts["images"] += 1
      try:
        example = converter.convert(item)
      except Skipped as e:
        counts["skipped"][e.reason] += 1
        _note(counts["skipped_files"], e.reason, f"{e.path}: {e.detail}")
        continue
      counts["annotations"] += example.annotations
      if box_task in example.labels:
        counts["boxes"] += len(example.labels[box_task].boxes)
      for reason, detail in example.annotation_skips:
        counts["annotations_skipped"][reason] += 1
        _note(counts["skipped_annotations"], reason, detail)
      for reason, detail in example.mask_skips:
        counts["masks_skipped"][reason] += 1
        _note(counts["skipped_masks"], reason, detail)
      record = schema.encode(example.image, example.labels, encoded=example.encoded,
                             image_format=example.image_format, source_id=example.source_id)
      records.write(record.SerializeToString(deterministic=True))
      counts["examples"] += 1
  tf.io.gfile.rename(path + ".incomplete", path, overwrite=True)
  return job, counts


def _add(total: dict, counts: dict) -> None:
  for key, value in counts.items():
    if isinstance(value, int):
      total[key] += value
    elif isinstance(value, collections.Counter):
      total[key].update(value)
    else:
      for reason, texts in value.items():
        total[key][reason] = (total[key][reason] + texts)[:MAX_LISTED]


def _split_summary(counts: dict, notes: dict, with_annotations: bool) -> dict:
  summary = {"images": counts["images"], "examples": counts["examples"],
             "skipped": dict(sorted(counts["skipped"].items())),
             "skipped_files": dict(sorted(counts["skipped_files"].items())), **notes}
  if with_annotations:
    summary["annotations"] = {
        "in": counts["annotations"], "boxes": counts["boxes"],
        "skipped": dict(sorted(counts["annotations_skipped"].items())),
        "skipped_examples": dict(sorted(counts["skipped_annotations"].items())),
        # Masks left out of the segmentation; their boxes are kept.
        "masks_skipped": dict(sorted(counts["masks_skipped"].items())),
        "masks_skipped_examples": dict(sorted(counts["skipped_masks"].items()))}
  return summary


def _balanced(summary: dict) -> bool:
  images = summary["images"] == summary["examples"] + sum(summary["skipped"].values())
  annotations = summary.get("annotations")
  return images and (annotations is None or annotations["in"] == annotations["boxes"] +
                     sum(annotations["skipped"].values()))


def check_split_names(names) -> None:
  for name in names:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
      raise cli.UserError(f"split name {name!r}: use letters, digits and _ (it names files)")
  if len(set(names)) != len(names):
    raise cli.UserError(f"split names repeat: {', '.join(names)}")


def write_plan(plan: Plan, output_dir: str, *, examples_per_shard: int = 1000,
               num_workers: int = 0, overwrite: bool = False,
               progress: Callable[[str], None] = print) -> dict:
  """Writes the plan's shards and `world.json` (returned) into `output_dir`.

  Args:
    plan: from a `plan_*` function.
    output_dir: any tf.io.gfile directory, empty or new (else `overwrite`).
    examples_per_shard: images per shard (skipped images leave it shorter).
    num_workers: worker processes (spawned); 0 converts in this process.
    overwrite: replace another run's output in `output_dir`.
    progress: called with one line per finished shard.

  Raises:
    cli.UserError: a bad argument or output dir, a split without images.
    cli.JobFailed: no image could be converted (nothing is published).
  """
  check_split_names(list(plan.items))
  if examples_per_shard < 1 or num_workers < 0:
    raise cli.UserError("examples_per_shard must be >= 1 and num_workers >= 0")
  for split, items in plan.items.items():
    if not items:
      raise cli.UserError(f"split {split} ({plan.inputs[split]}) has no images")
  jobs = []
  for split, items in plan.items.items():
    num_shards = math.ceil(len(items) / examples_per_shard)
    jobs += [_Job(split, shard, num_shards,
                  items[shard * examples_per_shard:(shard + 1) * examples_per_shard])
             for shard in range(num_shards)]
  total = sum(len(items) for items in plan.items.values())
  totals = {split: _new_counts() for split in plan.items}
  start, done = time.perf_counter(), 0
  with run_dir.RunDir(output_dir, overwrite) as out, contextlib.ExitStack() as stack:
    if num_workers:  # spawn: TensorFlow does not survive fork
      pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
          num_workers, mp_context=multiprocessing.get_context("spawn")))
      results = (f.result() for f in concurrent.futures.as_completed(
          [pool.submit(_write_shard, plan.converter, plan.task_params, out.staging, job)
           for job in jobs]))
    else:
      results = (_write_shard(plan.converter, plan.task_params, out.staging, job)
                 for job in jobs)
    for job, counts in results:
      _add(totals[job.split], counts)
      done += counts["images"]
      rate = done / max(time.perf_counter() - start, 1e-9)
      progress(f"convert: {job.split} shard {job.shard + 1}/{job.num_shards}: "
               f"{counts['examples']} examples, {sum(counts['skipped'].values())} skipped; "
               f"{done}/{total} images ({rate:.0f}/s)")
    seconds = time.perf_counter() - start
    with_annotations = plan.format == COCO
    summaries = {split: _split_summary(totals[split], plan.notes.get(split, {}), with_annotations)
                 for split in plan.items}
    if not any(s["examples"] for s in summaries.values()):
      reasons = collections.Counter()
      for s in summaries.values():
        reasons.update(s["skipped"])
      raise cli.JobFailed(f"no image of {total} could be converted (skipped: {dict(reasons)}); "
                          f"see {out.staging}")
    metadata = {
        "schema_version": schema_lib.SCHEMA_VERSION,
        "categories": plan.categories,
        "num_classes": len(plan.categories),
        "task_params": plan.task_params,
        "splits": {split: {"pattern": os.path.join(output_dir, f"{split}-*.tfrecord"),
                           "count": summaries[split]["examples"],
                           "tasks": list(plan.task_params), "partial": False}
                   for split in plan.items},
        "source_format": plan.format,
        **plan.metadata,
        "convert": {"inputs": plan.inputs, "counts": summaries,
                    "balanced": all(_balanced(s) for s in summaries.values()),
                    "examples_per_shard": examples_per_shard, "seconds": round(seconds, 3),
                    "images_per_second": round(total / max(seconds, 1e-9), 1)},
    }
    if not metadata["convert"]["balanced"]:
      raise cli.JobFailed(f"counts do not balance: {json.dumps(summaries)}")
    writer.write_metadata(out.staging, metadata)
    return out.publish(writer.METADATA_FILE)
