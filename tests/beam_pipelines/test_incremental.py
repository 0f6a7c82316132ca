"""Incremental and resumed pseudo-labeling with fake teachers: only new images or
changed tasks are labeled (the teachers' calls counted), and the result is the
full run's, record for record."""
import collections
import glob
import hashlib
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import yaml

from beam_pipelines import pseudo_label
from beam_pipelines import run_dir
from beam_pipelines import shards
from tests.beam_pipelines import fake_teachers

LOG_ENV, FAIL_ENV = "MUST_TEST_PREDICT_LOG", "MUST_TEST_FAIL_AFTER"
SEEDS = range(8)


class _CountingTeacher(fake_teachers.FakeTeacher):
  """A fake teacher that logs each image it labels (task, image hash) to the
  file named by $MUST_TEST_PREDICT_LOG, and fails once that log has
  $MUST_TEST_FAIL_AFTER lines (a killed run)."""

  def predict(self, encoded):
    log = os.environ[LOG_ENV]
    fail_after = int(os.environ.get(FAIL_ENV, "0"))
    if fail_after and os.path.exists(log):
      with open(log) as f:
        if sum(1 for _ in f) >= fail_after:
          raise RuntimeError("simulated kill")
    with open(log, "a") as f:
      f.writelines(f"{self.task} {hashlib.sha1(e).hexdigest()}\n" for e in encoded)
    return super().predict(encoded)


def _counting_load(path, task=None):
  del task
  return _CountingTeacher(path)


@pytest.fixture
def calls(tmp_path, monkeypatch):
  """task -> the distinct images its teacher labeled since the last call."""
  log = tmp_path / "predict.log"
  monkeypatch.setenv(LOG_ENV, str(log))

  def read():
    seen = collections.defaultdict(set)
    if log.exists():
      for line in log.read_text().splitlines():
        task, digest = line.split()
        seen[task].add(digest)
      log.unlink()
    return {task: len(images) for task, images in seen.items()}
  return read


def _corpus(root, seeds, part="part-000"):
  os.makedirs(root / part, exist_ok=True)
  for seed in seeds:
    pixels = np.random.default_rng(seed).integers(0, 256, (24 + seed, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    (root / part / f"{seed}.png").write_bytes(buffer.getvalue())
  return str(root / "part-*" / "*.png")


def _teachers_yaml(tmp_path, thresholds=None, versions=None, name="teachers"):
  paths = {}
  for task in fake_teachers.TASKS:
    version = (versions or {}).get(task, "v1")
    paths.update(fake_teachers.write(str(tmp_path / f"{name}_dirs" / version), [task], version))
  path = tmp_path / f"{name}.yaml"
  path.write_text(yaml.safe_dump({
      "teachers": [{"task": t, "path": p, "batch_size": 2} for t, p in paths.items()],
      "thresholds": thresholds or {}}))
  return str(path)


def _run(tmp_path, pattern, out, *extra, teachers=None):
  return pseudo_label.run(
      ["--runner=DirectRunner", f"--input_pattern={pattern}", "--num_shards=2",
       f"--teachers_config={teachers or _teachers_yaml(tmp_path)}",
       f"--output_dir={tmp_path / out}", *extra], _counting_load)


def _records(tmp_path, out):
  files = sorted(glob.glob(str(tmp_path / out / "pseudo_labeled-*.tfrecord")))
  return sorted(r.numpy() for r in tf.data.TFRecordDataset(files))


def _without_reuse(tasks):
  return {task: {k: v for k, v in stats.items() if k != pseudo_label.REUSED}
          for task, stats in tasks.items()}


ALL = {task: len(SEEDS) for task in fake_teachers.TASKS}


def test_a_grown_corpus_labels_only_its_new_images(tmp_path, calls):
  _run(tmp_path, _corpus(tmp_path / "corpus", SEEDS[:6]), "first")
  assert calls() == {task: 6 for task in fake_teachers.TASKS}
  pattern = _corpus(tmp_path / "corpus", SEEDS[6:], "part-001")  # grown by two images
  grown = _run(tmp_path, pattern, "grown", f"--previous_output={tmp_path / 'first'}")
  assert calls() == {task: 2 for task in fake_teachers.TASKS}
  full = _run(tmp_path, pattern, "full")
  assert calls() == ALL
  assert grown["counts"] == {**full["counts"], "reused": 6, "newly_labeled": 2}
  assert grown["counts"]["balanced"]
  assert grown["reused_from"] == [{"from": str(tmp_path / "first"),
                                   "tasks": sorted(fake_teachers.TASKS)}]
  assert _records(tmp_path, "grown") == _records(tmp_path, "full")  # readers see one data set
  assert _without_reuse(grown["tasks"]) == full["tasks"]
  assert grown["tasks"]["depth"]["reused"] == 6
  # Chained: the grown run's output is a previous output too; it holds the union.
  _run(tmp_path, pattern, "again", f"--previous_output={tmp_path / 'grown'}")
  assert calls() == {}
  metadata = shards.load_metadata(str(tmp_path / "again" / "summary.json"))
  assert metadata["task_params"] == full["config"]["task_params"]


@pytest.mark.parametrize("change, relabeled", [
    ({"thresholds": {"detection": {"min_score": 0.55}}}, "detection"),
    ({"versions": {"segmentation": "v2"}}, "segmentation"),
])
def test_a_changed_teacher_or_threshold_relabels_its_task_only(tmp_path, calls, change,
                                                               relabeled):
  pattern = _corpus(tmp_path / "corpus", SEEDS)
  _run(tmp_path, pattern, "first")
  calls()
  teachers = _teachers_yaml(tmp_path, name="changed", **change)
  changed = _run(tmp_path, pattern, "changed", f"--previous_output={tmp_path / 'first'}",
                 teachers=teachers)
  assert calls() == {relabeled: len(SEEDS)}
  assert changed["reused_from"][0]["tasks"] == sorted(set(fake_teachers.TASKS) - {relabeled})
  assert changed["counts"]["reused"] == 0 and changed["counts"]["newly_labeled"] == len(SEEDS)
  full = _run(tmp_path, pattern, "full", teachers=teachers)
  assert _records(tmp_path, "changed") == _records(tmp_path, "full")
  assert relabeled not in [t for t, s in changed["tasks"].items() if "reused" in s]
  assert _without_reuse(changed["tasks"]) == full["tasks"]


def test_a_killed_run_resumes_without_relabeling_its_committed_work(tmp_path, calls,
                                                                    monkeypatch):
  pattern = _corpus(tmp_path / "corpus", SEEDS)
  monkeypatch.setenv(FAIL_ENV, "16")  # 2 batches of 2 images x 4 teachers, then a kill
  with pytest.raises(Exception, match="simulated kill"):
    _run(tmp_path, pattern, "out", "--checkpoint_every=1")
  calls()
  committed = glob.glob(str(tmp_path / "out" / run_dir.CHECKPOINTS / "*" / "*.tfrecord"))
  assert len(committed) == 4
  monkeypatch.delenv(FAIL_ENV)
  resumed = _run(tmp_path, pattern, "out", "--resume")
  assert calls() == {task: len(SEEDS) - 4 for task in fake_teachers.TASKS}
  assert resumed["counts"]["reused"] == 4 and resumed["counts"]["newly_labeled"] == 4
  assert not os.path.exists(tmp_path / "out" / run_dir.CHECKPOINTS)
  _run(tmp_path, pattern, "full")
  assert _records(tmp_path, "out") == _records(tmp_path, "full")
  # Without --resume a rerun starts over.
  monkeypatch.setenv(FAIL_ENV, "16")
  with pytest.raises(Exception, match="simulated kill"):
    _run(tmp_path, pattern, "again", "--checkpoint_every=1")
  monkeypatch.delenv(FAIL_ENV)
  calls()
  _run(tmp_path, pattern, "again")
  assert calls() == ALL


def test_a_previous_output_must_be_a_published_run(tmp_path):
  pattern = _corpus(tmp_path / "corpus", SEEDS[:1])
  (tmp_path / "empty").mkdir()
  with pytest.raises(Exception, match="no published pseudo_label run"):
    _run(tmp_path, pattern, "out", f"--previous_output={tmp_path / 'empty'}")
  with pytest.raises(Exception, match="is the --output_dir"):
    _run(tmp_path, pattern, "out", f"--previous_output={tmp_path / 'out'}")
