"""Converts a labeled data set (COCO, image folders, RGB-D pairs) into schema shards.

  python -m must.data.convert --format=coco --output_dir=out/coco \
      --splits=train,eval \
      --inputs=annotations/instances_train2017.json,annotations/instances_val2017.json \
      --images=train2017,val2017 [--segmentation_from=instances]
  python -m must.data.convert --format=folder --output_dir=out/imagenet \
      --splits=train,eval --inputs=imagenet/train,imagenet/val
  python -m must.data.convert --format=rgbd --output_dir=out/rgbd \
      --inputs=nyu/train --depth_scale=0.001

Writes `<split>-NNNNN-of-NNNNN.tfrecord` and a `world.json` that binaries taking
`--world_dir` read (see `must.data.converters`). List flags are aligned with
`--splits`: one entry per split.
"""
import json

from absl import flags

from must import cli
from must.data import converters

_FORMAT = flags.DEFINE_enum("format", None, converters.FORMATS, "The input format.",
                            required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write (empty or new).",
                                  required=True)
_SPLITS = flags.DEFINE_list("splits", ["train"], "Split names, one per entry of --inputs.")
_INPUTS = flags.DEFINE_list(
    "inputs", None, "Per split: the COCO instances JSON (coco), the root of class folders "
    "(folder), or the root holding the RGB and depth folders (rgbd).", required=True)
_IMAGES = flags.DEFINE_list("images", [], "coco: per split, the image dir.")
_SEGMENTATION = flags.DEFINE_enum(
    "segmentation_from", "none", ["none", converters.INSTANCES, converters.PANOPTIC],
    "coco: also label segmentation, from the instance masks or from panoptic PNGs.")
_PANOPTIC_JSON = flags.DEFINE_list("panoptic_json", [], "coco: per split, the panoptic JSON.")
_PANOPTIC_DIR = flags.DEFINE_list("panoptic_dir", [], "coco: per split, the panoptic PNG dir.")
_DEPTH_SCALE = flags.DEFINE_float(
    "depth_scale", None, "rgbd: depth of one 16-bit PNG code (0.001: millimetres); .npy "
    "depth is taken as it is.")
_DEPTH_KIND = flags.DEFINE_enum("depth_kind", converters.DEPTH_KINDS[1], converters.DEPTH_KINDS,
                                "rgbd: what the depth values are.")
_RGB_SUBDIR = flags.DEFINE_string("rgb_subdir", converters.RGB_SUBDIR,
                                  "rgbd: the images' folder under each input.")
_DEPTH_SUBDIR = flags.DEFINE_string("depth_subdir", converters.DEPTH_SUBDIR,
                                    "rgbd: the depth maps' folder under each input.")
_EXAMPLES_PER_SHARD = flags.DEFINE_integer("examples_per_shard", 1000, "Images per shard.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "Worker processes; 0: this one.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace another run's output in --output_dir.")


def _per_split(flag, splits: list[str], required: bool = True) -> list[str]:
  values = flag.value or []
  if not values and not required:
    return [""] * len(splits)
  if len(values) != len(splits):
    raise cli.UserError(f"--{flag.name} has {len(values)} entries, --splits "
                        f"{','.join(splits)} has {len(splits)}: one per split")
  return values


def make_plan() -> converters.Plan:
  """The plan of the flags' format and inputs."""
  splits = _SPLITS.value
  converters.check_split_names(splits)
  inputs = dict(zip(splits, _per_split(_INPUTS, splits)))
  if _FORMAT.value == converters.COCO:
    panoptic = _SEGMENTATION.value == converters.PANOPTIC
    specs = {split: converters.CocoSplit(annotations, images, panoptic_json, panoptic_dir)
             for split, annotations, images, panoptic_json, panoptic_dir in zip(
                 splits, inputs.values(), _per_split(_IMAGES, splits),
                 _per_split(_PANOPTIC_JSON, splits, required=panoptic),
                 _per_split(_PANOPTIC_DIR, splits, required=panoptic))}
    source = "" if _SEGMENTATION.value == "none" else _SEGMENTATION.value
    return converters.plan_coco(specs, source)
  if _FORMAT.value == converters.FOLDER:
    return converters.plan_folder(inputs)
  return converters.plan_rgbd(inputs, _DEPTH_SCALE.value, _DEPTH_KIND.value,
                              _RGB_SUBDIR.value, _DEPTH_SUBDIR.value)


def main(argv):
  del argv
  metadata = converters.write_plan(
      make_plan(), _OUTPUT_DIR.value, examples_per_shard=_EXAMPLES_PER_SHARD.value,
      num_workers=_NUM_WORKERS.value, overwrite=_OVERWRITE.value)
  counts = {split: {key: value for key, value in summary.items() if key != "skipped_files"}
            for split, summary in metadata["convert"]["counts"].items()}
  print(json.dumps({"output_dir": _OUTPUT_DIR.value, "task_params": metadata["task_params"],
                    "counts": counts}, indent=2))


def run_cli():
  cli.run_absl(main)


if __name__ == "__main__":
  run_cli()
