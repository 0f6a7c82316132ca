"""The world writer: splits, their labels, the corpus, determinism, configs."""
import glob
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from must import configs
from must import schema as schema_lib
from must.world import scene as scene_lib
from must.world import writer

TINY = str(pathlib.Path(__file__).parents[3] / "configs/world/tiny.yaml")


def _records(pattern: str) -> list[bytes]:
  files = sorted(glob.glob(pattern))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _decode(records: list[bytes]) -> list[dict]:
  schema = schema_lib.Schema(writer.task_params())
  return [tf.nest.map_structure(lambda t: t.numpy(), schema.decode(r)) for r in records]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  config = configs.load(writer.WorldConfig(), TINY, {"corpus_png_fraction": 0.3,
                                                       "image_format": "png"})
  output_dir = str(tmp_path_factory.mktemp("world"))
  lines = []
  metadata = writer.write_world(config, output_dir, progress=lines.append)
  return config, output_dir, metadata, lines


def test_every_split_has_its_count_and_only_its_tasks(world):
  config, output_dir, metadata, lines = world
  assert lines and lines[-1].startswith(f"world: {metadata['scenes']}/{metadata['scenes']}")
  with open(os.path.join(output_dir, "world.json")) as f:
    assert json.load(f) == metadata
  for name, split in metadata["splits"].items():
    assert split["count"] == getattr(config.sizes, name)
    if name == "corpus":
      continue
    examples = _decode(_records(split["pattern"]))
    assert len(examples) == split["count"], name
    for example in examples:
      present = {t for t in writer.task_params() if example[t]["present"]}
      if split["partial"]:
        assert present and present <= set(writer.teacher_tasks()), present
      else:
        assert present == set(split["tasks"]), (name, present)
      assert all(example[t]["source"] == b"ground_truth" for t in present)


def test_corpus_is_plain_jpeg_and_png_files(world):
  config, _, metadata, _ = world
  files = sorted(glob.glob(metadata["splits"]["corpus"]["pattern"]))
  assert len(files) == config.sizes.corpus
  formats = {Image.open(f).format for f in files}
  assert formats == {"JPEG", "PNG"}
  for f in files:
    assert Image.open(f).size == (config.render.width, config.render.height)


def test_splits_are_disjoint(world):
  _, _, metadata, _ = world
  seen = {}
  for name, split in metadata["splits"].items():
    if name == "corpus":
      ids = {tf.io.gfile.GFile(f, "rb").read() for f in glob.glob(split["pattern"])}
    else:
      ids = {e["image"].tobytes() for e in _decode(_records(split["pattern"]))}
    for other, other_ids in seen.items():
      assert not ids & other_ids, (name, other)
    seen[name] = ids


def test_records_hold_the_rendered_scenes_labels(world):
  config, _, metadata, _ = world
  examples = _decode(_records(metadata["splits"]["eval"]["pattern"]))
  params = writer.render_params(config)
  for index, example in enumerate(examples):
    scene = scene_lib.render_scene(scene_lib.scene_rng(config.seed, "eval", index), params)
    np.testing.assert_array_equal(example["segmentation"]["mask"], scene.semantic)
    np.testing.assert_allclose(example["detection"]["boxes"], scene.boxes, atol=1e-6)
    np.testing.assert_array_equal(example["detection"]["classes"], scene.classes)
    assert example["classification"]["label"] == scene.image_class
    assert example["depth"]["kind"] == b"metric"
    scale = (scene.depth.max() - scene.depth.min()) / 65534
    assert np.abs(example["depth"]["depth"] - scene.depth).max() <= scale
    np.testing.assert_allclose(example["surface_normals"]["normals"], scene.normals,
                               atol=1.0 / 32767)
    np.testing.assert_array_equal(example["image"], scene.image)


def test_same_config_writes_identical_shards(world, tmp_path):
  config, output_dir, _, _ = world
  job = next(j for j in writer._jobs(config) if j.split.name == "detection")
  writer._write_job(config.as_dict(), str(tmp_path), job)
  again = writer._shard_path(str(tmp_path), job)
  with open(again, "rb") as f, open(writer._shard_path(output_dir, job), "rb") as g:
    assert f.read() == g.read()
  other_seed = writer.WorldConfig(config.as_dict())
  other_seed.override({"seed": 1})
  writer._write_job(other_seed.as_dict(), str(tmp_path / "seed1"), job)
  with open(writer._shard_path(str(tmp_path / "seed1"), job), "rb") as f:
    assert f.read() != open(again, "rb").read()


def test_preview_is_written(world):
  _, output_dir, _, _ = world
  preview = Image.open(os.path.join(output_dir, "preview.png"))
  assert preview.format == "PNG" and preview.size[0] > 300


@pytest.mark.parametrize("override,message", [
    ({"sizes": {"evaluation": 3}}, "'evaluation' does not exist"),
    ({"render": {"height": "tall"}}, "render.height must be int"),
    ({"image_format": "gif"}, "image_format must be one of"),
    ({"sizes": {"eval": -1}}, "sizes.eval must be >= 0"),
])
def test_bad_config_is_named(override, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.load(writer.WorldConfig(), None, override)


def test_bad_config_file_is_named(tmp_path):
  path = tmp_path / "world.yaml"
  path.write_text("sizes:\n  corpuss: 3\n")
  with pytest.raises(configs.ConfigError, match=f"{path}.*'corpuss' does not exist"):
    configs.load(writer.WorldConfig(), str(path))
  with pytest.raises(configs.ConfigError, match="cannot read"):
    configs.load(writer.WorldConfig(), str(tmp_path / "missing.yaml"))


def test_writes_and_reads_a_world_on_any_gfile_path(tmp_path, monkeypatch):
  # ram:// stands in for gs://: every file of the world goes through tf.io.gfile.
  monkeypatch.chdir(tmp_path)  # where the old os.makedirs would make a local "ram:" folder
  sizes = {name: 2 for name in writer.SplitSizes().as_dict()}
  config = configs.load(writer.WorldConfig(), TINY, {"sizes": sizes, "preview_scenes": 1})
  output_dir = "ram://world"
  metadata = writer.write_world(config, output_dir, progress=lambda line: None)
  assert writer.load_metadata(output_dir) == metadata
  assert tf.io.gfile.exists(f"{output_dir}/preview.png")
  assert len(tf.io.gfile.glob(metadata["splits"]["corpus"]["pattern"])) == 2
  eval_files = tf.io.gfile.glob(metadata["splits"]["eval"]["pattern"])
  assert len(list(tf.data.TFRecordDataset(eval_files))) == 2
  with pytest.raises(FileNotFoundError, match="ram://nowhere/world.json does not exist"):
    writer.load_metadata("ram://nowhere")
