"""Configs of the multi-task student and its registered experiments.

  must_student       ResNet-FPN student with one head per task the default world
                     trains a teacher for, at the default world's image size
                     (`must.world.writer`), sized for a 2-core CPU.
  must_student_tiny  the same with a ResNet-10 at quarter width, 16-filter FPN
                     and heads and batches of 4, for tests.

The loss weight of each head follows the paper: w_i = (b_s * lr_i) / (b_i *
lr_s), with b, lr the batch size and learning rate of teacher i's training and
of the student's; depth is weighed on its own (1). `resolve_loss_weights` fills
in every weight left unset from the teachers' `teacher.json`.
"""
import dataclasses
import logging
from typing import List, Mapping, Optional, Sequence, Union

from must import configs
from must import serving
from must import tasks
from must.tasks import heads as heads_lib
from must.world import writer
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import hyperparams
from official.vision.configs import backbones
from official.vision.configs import common
from official.vision.configs import decoders

EXPERIMENT = "must_student"


@dataclasses.dataclass
class StudentModel(hyperparams.Config):
  """Backbone + FPN on levels min_level..max_level + one head per task."""
  input_size: List[int] = dataclasses.field(
      default_factory=lambda: [writer.RenderConfig.height, writer.RenderConfig.width, 3])
  min_level: int = 2
  max_level: int = 7
  backbone: backbones.Backbone = dataclasses.field(default_factory=configs.small_resnet)
  decoder: decoders.Decoder = dataclasses.field(
      default_factory=lambda: decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=64)))
  norm_activation: common.NormActivation = dataclasses.field(
      default_factory=configs.norm_activation)
  heads: List[heads_lib.HeadConfig] = dataclasses.field(default_factory=list)


# RandAugment's ops that move pixels: they would misalign the dense labels and
# boxes, so the student never applies them (its noise is photometric).
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


@dataclasses.dataclass
class StudentDataConfig(configs.SchemaDataConfig):
  """TFRecords in the MuST schema (e.g. the pseudo-labeling pipeline's shards).

  Attributes:
    aug_type: input noise of a Noisy Student round (training only): Model
      Garden's `randaug` (`official.vision.ops.augment.RandAugment`) without
      its geometric ops (`GEOMETRIC_OPS`), which would move the pixels away
      from the dense labels and boxes; None for no noise.
  """
  aug_type: Optional[common.Augmentation] = None


@dataclasses.dataclass
class StudentTaskConfig(cfg.TaskConfig):
  """The student task.

  Attributes:
    teachers: teacher export dirs (with `teacher.json`) whose training batch
      size and learning rate set the default loss weights.
    l2_weight_decay: L2 regularization of the kernels.
    init_checkpoint_modules: 'all', or 'backbone' and/or 'decoder'.
  """
  model: StudentModel = dataclasses.field(default_factory=StudentModel)
  train_data: StudentDataConfig = dataclasses.field(default_factory=StudentDataConfig)
  validation_data: StudentDataConfig = dataclasses.field(
      default_factory=lambda: StudentDataConfig(is_training=False, aug_rand_hflip=False,
                                                drop_remainder=False))
  teachers: List[str] = dataclasses.field(default_factory=list)
  l2_weight_decay: float = 1e-5
  init_checkpoint: Optional[str] = None
  init_checkpoint_modules: Union[str, List[str]] = "all"


def default_heads(task_params: Mapping[str, Mapping] | None = None,
                  task_names: Sequence[str] | None = None) -> list[heads_lib.HeadConfig]:
  """One head per task, with classes where the task's world params give a count.

  Args:
    task_params: a world's `task_params` (its world.json); default: what the
      default world writes (`must.world.writer.task_params`).
    task_names: the heads' tasks; default: the tasks the world trains teachers
      for (`must.world.writer.teacher_tasks`).
  """
  task_params = writer.task_params() if task_params is None else task_params
  names = writer.teacher_tasks() if task_names is None else task_names
  return [heads_lib.HeadConfig(task=name, num_classes=task_params[name].get("num_classes", 0))
          for name in names]


@exp_factory.register_config_factory(EXPERIMENT)
def must_student() -> cfg.ExperimentConfig:
  """The CPU-sized student: half-width ResNet-18, 64-filter FPN P2-P7, 96x96."""
  batch_size = 32
  return cfg.ExperimentConfig(
      task=StudentTaskConfig(
          model=StudentModel(heads=default_heads()),
          train_data=StudentDataConfig(is_training=True, global_batch_size=batch_size),
          validation_data=StudentDataConfig(is_training=False, global_batch_size=batch_size,
                                            aug_rand_hflip=False, drop_remainder=False)),
      trainer=configs.trainer(train_steps=2000, learning_rate=2e-3),
      restrictions=["task.train_data.is_training != None",
                    "task.validation_data.is_training != None"])


TINY_EXPERIMENT = configs.register_tiny(EXPERIMENT, lambda params: {
    "decoder": {"fpn": {"num_filters": 16}},
    "heads": [{"num_filters": 16, "num_convs": 1} for _ in params.task.model.heads]})
EXPERIMENTS = (EXPERIMENT, TINY_EXPERIMENT)


def schema_params(head: heads_lib.HeadConfig) -> dict:
  """The schema parameters of a head's task (its class count, where it has one)."""
  return {"num_classes": head.num_classes} if head.num_classes else {}


def check_heads(model: StudentModel) -> None:
  """Stops with a message naming the head when a task is unknown or repeated."""
  if not model.heads:
    raise ValueError("task.model.heads is empty: give at least one head")
  names = [head.task for head in model.heads]
  if len(set(names)) != len(names):
    raise ValueError(f"task.model.heads repeats a task: {names}")
  for head in model.heads:  # a missing task lists the registered ones
    heads_lib.typed_options(head, tasks.get(head.task).head_options)


def _teacher_schedules(teacher_dirs: Sequence[str]) -> dict[str, tuple[int | None, float | None]]:
  """Task -> (batch size, learning rate) its teacher among `teacher_dirs` trained it with.

  A multi-task teacher (the student of a previous self-training round) trained
  each task at its learning rate times that task's loss weight.
  """
  schedules = {}
  for path in dict.fromkeys(teacher_dirs):
    metadata = serving.TeacherMetadata.read(path)
    for task in metadata.tasks or [metadata.task]:
      weight = ((metadata.tasks or {}).get(task) or {}).get("loss_weight") or 1.0
      lr = metadata.train_learning_rate
      schedules[task] = (metadata.train_batch_size, lr * weight if lr else lr)
  return schedules


def resolve_loss_weights(params: cfg.ExperimentConfig) -> dict[str, float]:
  """Fills in every head's unset loss weight (the paper's rule); returns them all.

  w_i = (b_s * lr_i) / (b_i * lr_s) for heads whose task follows the teacher
  rule and whose teacher is in `task.teachers`; b_s is the student's effective
  batch (`configs.effective_batch_size`: the batch times
  `trainer.gradient_accumulation_steps`), as teachers record theirs; lr_i of a
  multi-task teacher (a previous round's student) is its learning rate times
  its loss weight for the task. 1.0 for the others (depth, or a task without
  teacher metadata). Weights set in the config are kept.
  """
  schedules = _teacher_schedules(params.task.teachers)
  student_batch = configs.effective_batch_size(params)
  student_lr = configs.initial_learning_rate(params.trainer)
  weights = {}
  check_heads(params.task.model)
  for head in params.task.model.heads:
    if head.loss_weight is None:
      rule = tasks.get(head.task).student_loss_weight_rule
      teacher_batch, teacher_lr = schedules.get(head.task, (None, None))
      if rule == "teacher" and teacher_batch and teacher_lr:
        head.loss_weight = float(student_batch * teacher_lr / (teacher_batch * student_lr))
      else:
        if rule == "teacher":
          logging.warning("no teacher metadata for %s in task.teachers, or no training "
                          "batch size and learning rate in it: loss weight 1", head.task)
        head.loss_weight = 1.0
    weights[head.task] = head.loss_weight
  return weights


def model_spec(model: StudentModel, l2_regularizer=None) -> heads_lib.ModelSpec:
  """What the heads see of the student model."""
  return heads_lib.ModelSpec(input_size=list(model.input_size[:2]), min_level=model.min_level,
                         max_level=model.max_level, norm_activation=model.norm_activation,
                         l2_regularizer=l2_regularizer)


def build_heads(model: StudentModel, l2_regularizer=None) -> dict[str, heads_lib.StudentHead]:
  """Task name -> its `StudentHead`, in the config's order."""
  check_heads(model)
  spec = model_spec(model, l2_regularizer)
  return {head.task: tasks.build(head.task, **schema_params(head)).student_head(head, spec)
          for head in model.heads}
