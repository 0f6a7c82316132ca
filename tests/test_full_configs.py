"""The full-size configs load into what they say, without building a model.

Building the Keras models of the five full-size configs takes about 25 s here
(over this suite's budget); `python -m benchmarks.full_size` builds, trains,
exports and labels with each of them.
"""
import pathlib

import pytest

from must import configs
from must.student import config as student_config
from must.world import writer
import teachers
from official.core import exp_factory

REPO = pathlib.Path(__file__).resolve().parents[1]
TEACHER_CONFIGS = sorted(str(p) for p in (REPO / "configs/teachers").glob("*_full.yaml"))
STUDENT_CONFIG = str(REPO / "configs/student/student_full.yaml")


def _load(path: str):
  name = pathlib.Path(path).name.removesuffix("_full.yaml")
  experiment = (teachers.TEACHERS[name].EXPERIMENT if name in teachers.TEACHERS
                else student_config.EXPERIMENT)
  return configs.load(exp_factory.get_exp_config(experiment), path)


@pytest.mark.parametrize("path", [*TEACHER_CONFIGS, STUDENT_CONFIG])
def test_full_configs_are_resnet50_at_a_size_every_level_divides(path):
  model = _load(path).task.model
  assert model.backbone.resnet.model_id == 50 and model.backbone.resnet.depth_multiplier == 1.0
  assert min(model.input_size[:2]) >= 224
  max_level = getattr(model, "max_level", 5)
  assert model.input_size[0] % 2**max_level == 0 and model.input_size[1] % 2**max_level == 0


@pytest.mark.parametrize("path", TEACHER_CONFIGS)
def test_full_teachers_use_sgd_where_the_rate_is_an_sgd_rate(path):
  # Adam at 0.01-0.4 diverges: those rates are SGD's.
  trainer = _load(path).trainer
  if configs.initial_learning_rate(trainer) > 0.005:
    assert trainer.optimizer_config.optimizer.type == "sgd"


def test_full_student_heads_are_each_its_own_task_with_its_options():
  params = _load(STUDENT_CONFIG)
  heads = {head.task: head for head in params.task.model.heads}
  assert set(heads) == set(writer.teacher_tasks())
  teacher_classes = {pathlib.Path(p).name.removesuffix("_full.yaml"):
                     getattr(_load(p).task.model, "num_classes", 0) for p in TEACHER_CONFIGS}
  for task, head in heads.items():  # each head the class space of its full teacher
    assert head.num_classes == (teacher_classes.get(task) or 0), task
  # Set in a YAML list as long as the default heads (merged element by element).
  detection = student_config.build_heads(params.task.model)["detection"]
  assert detection.options.anchor.anchor_size == 4.0 and detection.options.max_boxes == 100


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "configs").glob("*/student*.yaml")))
def test_student_heads_in_any_order_keep_only_their_own_values(path):
  # Model Garden merges a same-length list element by element: a head listed in
  # another place than the default's must not take the values of the head there.
  params = configs.load(exp_factory.get_exp_config(student_config.EXPERIMENT), path)
  for head in params.task.model.heads:
    if not student_config.tasks.get(head.task).has_classes:
      assert head.num_classes == 0, head
  student_config.build_heads(params.task.model)
