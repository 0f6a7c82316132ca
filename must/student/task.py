"""The student as a Model Garden task: input, losses, train and eval steps.

`StudentTask` is registered with Model Garden's task factory for
`StudentTaskConfig`, so `train_lib.run_experiment` trains it under any
`tf.distribute` strategy. Per task:

  input     `Schema.decode`, then each head's `targets` (one random flip shared
            by the image and every label; `train_data.aug_type` adds
            photometric RandAugment noise to the image alone); sharded per input pipeline, read
            and decoded in parallel, prefetched (Model Garden's input reader)
  loss      each head's (sum, normalizer); normalizers are summed over
            replicas, so the loss is the same on one device or many, and an
            example without a label for a task adds nothing to that task
  metrics   the task registry's metric (top-1, COCO AP, mIoU, AbsRel and
            delta<1.25, ...) over the whole eval set, on the served outputs
            and the raw decoded labels (`must.evaluate`, as for the teachers)
A NaN or Inf loss stops training with a message naming the task.
"""
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
import tf_keras
from must import evaluate
from must import schema as schema_lib
from must import serving
from must import training
from must.student import config as student_config
from must.student import model as model_lib
from must.tasks import heads as heads_lib
from official.common import dataset_fn as dataset_fn_lib
from official.core import base_task
from official.core import task_factory
from official.vision.dataloaders import input_reader_factory
from official.vision.dataloaders import parser as parser_lib
from official.vision.ops import augment


class Parser(parser_lib.Parser):
  """Decoded MuST example -> (normalized image, {task: that head's targets})."""

  def __init__(self, student_heads: Mapping[str, heads_lib.StudentHead], output_size,
               aug_rand_hflip: bool = False, dtype: str = "float32",
               augmenter: Optional[augment.ImageAugment] = None):
    self._heads = dict(student_heads)
    self._output_size = list(output_size)
    self._aug_rand_hflip = aug_rand_hflip
    self._dtype = dtype
    self._augmenter = augmenter

  def _parse(self, decoded, flip, augment_image: bool = False):
    image = decoded["image"]
    if augment_image and self._augmenter is not None:
      image = self._augmenter.distort(image)  # uint8 in, uint8 out; labels untouched
    image = tf.image.resize(heads_lib.normalize_images(image), self._output_size,
                            method="bilinear")
    image = heads_lib.flip_dense(image, flip)
    labels = {task: head.targets(decoded[task], flip, self._output_size)
              for task, head in self._heads.items()}
    return tf.cast(image, self._dtype), labels

  def _parse_train_data(self, decoded_tensors):
    flip = tf.random.uniform([]) < 0.5 if self._aug_rand_hflip else tf.constant(False)
    return self._parse(decoded_tensors, flip, augment_image=True)

  def _parse_eval_data(self, decoded_tensors):
    image, labels = self._parse(decoded_tensors, tf.constant(False))
    return image, {**labels, evaluate.GROUND_TRUTH: evaluate.ground_truth(decoded_tensors,
                                                                          self._heads)}


def build_augmenter(aug_type) -> Optional[augment.ImageAugment]:
  """Model Garden's RandAugment for `aug_type` (`StudentDataConfig.aug_type`),
  without the geometric ops; None for no augmentation."""
  if aug_type is None or aug_type.type is None:
    return None
  if aug_type.type != "randaug":
    raise ValueError(f"task.train_data.aug_type.type {aug_type.type!r}: the student takes "
                     "'randaug' (photometric ops only: the labels must stay aligned)")
  randaug = aug_type.randaug
  return augment.RandAugment(
      num_layers=randaug.num_layers, magnitude=randaug.magnitude,
      cutout_const=randaug.cutout_const, translate_const=randaug.translate_const,
      magnitude_std=randaug.magnitude_std, prob_to_apply=randaug.prob_to_apply,
      exclude_ops=sorted(set(randaug.exclude_ops) | set(student_config.GEOMETRIC_OPS)))


def _float32(tree):
  return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32), tree)


@task_factory.register_task_cls(student_config.StudentTaskConfig)
class StudentTask(base_task.Task):
  """Multi-task self-training student (MuST)."""

  def __init__(self, params, logging_dir: Optional[str] = None, name: Optional[str] = None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self.heads = student_config.build_heads(params.model)
    self.schema = schema_lib.Schema({head.task: student_config.schema_params(head)
                                     for head in params.model.heads})
    self.loss_weights = {head.task: 1.0 if head.loss_weight is None else head.loss_weight
                         for head in params.model.heads}

  @property
  def input_size(self) -> list[int]:
    return list(self.task_config.model.input_size[:2])

  def build_model(self) -> model_lib.MultiTaskModel:
    decay = self.task_config.l2_weight_decay
    # Halved to match tf.nn.l2_loss, as the stock vision tasks do.
    l2_regularizer = tf_keras.regularizers.l2(decay / 2.0) if decay else None
    model, _ = model_lib.build_model(self.task_config.model, l2_regularizer)
    return model

  def initialize(self, model: model_lib.MultiTaskModel):
    """Loads `init_checkpoint` into all of the model or the named modules.

    The checkpoint may be a training checkpoint of any Model Garden model with
    the same backbone (a teacher's, for the transfer study), or the student's
    exported `backbone/` checkpoint.
    """
    path = self.task_config.init_checkpoint
    if not path:
      return
    if tf.io.gfile.isdir(path):
      path = tf.train.latest_checkpoint(path)
      if path is None:
        raise FileNotFoundError(f"task.init_checkpoint={self.task_config.init_checkpoint!r} "
                                "holds no checkpoint")
    modules = self.task_config.init_checkpoint_modules
    modules = [modules] if isinstance(modules, str) else list(modules)
    items = model.checkpoint_items
    if "all" in modules:
      serving.restore(path, model=model)
      return
    unknown = sorted(set(modules) - set(items))
    if unknown:
      raise ValueError(f"task.init_checkpoint_modules names {unknown}; valid: "
                       f"all, {sorted(items)}")
    named = {name: items[name] for name in modules}
    # Model Garden's training checkpoints and the exported backbone both hold
    # the modules at their root; a plain `Checkpoint(model=...)` nests them.
    roots = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(path)}
    serving.restore(path, **(named if set(named) <= roots
                             else {"model": tf.train.Checkpoint(**named)}))

  def build_inputs(self, params: student_config.StudentDataConfig,
                   input_context: Optional[tf.distribute.InputContext] = None
                   ) -> tf.data.Dataset:
    """Batches of (images [B, H, W, 3], {task: targets}, eval: and `ground_truth`)."""
    parser = Parser(self.heads, self.input_size, aug_rand_hflip=params.aug_rand_hflip,
                    dtype=params.dtype, augmenter=build_augmenter(params.aug_type))
    reader = input_reader_factory.input_reader_generator(
        params,
        dataset_fn=dataset_fn_lib.pick_dataset_fn(params.file_type),
        decoder_fn=self.schema.decode,
        parser_fn=parser.parse_fn(params.is_training),
        transform_and_batch_fn=None if params.is_training else evaluate.padded_batch(params))
    return reader.read(input_context=input_context)

  def task_losses(self, labels: Mapping[str, Any], outputs: Mapping[str, Any]
                  ) -> dict[str, tf.Tensor]:
    """Each task's unweighted loss on this replica, normalized over all replicas.

    loss = num_replicas * sum / (normalizer summed over replicas): averaged
    over replicas (as training does) it is sum_all / normalizer_all.
    """
    context = tf.distribute.get_replica_context()
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    losses = {}
    for task, head in self.heads.items():
      total, normalizer = head.loss(_float32(outputs[task]), labels[task])
      if context is not None and num_replicas > 1:
        normalizer = context.all_reduce(tf.distribute.ReduceOp.SUM, normalizer)
      losses[task] = num_replicas * total / tf.maximum(normalizer, 1.0)
    return losses

  def build_metrics(self, training: bool = True):
    """The mean of each task's loss (summaries per task)."""
    del training
    return [tf_keras.metrics.Mean(f"{task}_loss", dtype=tf.float32) for task in self.heads]

  def build_losses(self, labels, model_outputs, aux_losses=None, metrics=None) -> tf.Tensor:
    """The weighted sum of the task losses plus regularization, per replica.

    Updates each task's loss metric in `metrics`; a NaN or Inf task loss
    stops with a message naming the task.
    """
    losses = self.task_losses(labels, model_outputs)
    for task, loss in losses.items():
      tf.debugging.check_numerics(
          loss, f"the {task} loss is NaN or Inf: lower the learning rate, raise "
          f"the warm-up, or check the {task} labels")
    total = tf.add_n([self.loss_weights[task] * loss for task, loss in losses.items()])
    if aux_losses:
      total += tf.add_n(aux_losses)
    for metric in metrics or []:
      metric.update_state(losses[metric.name[:-len("_loss")]])
    return total

  def train_step(self, inputs, model: tf_keras.Model, optimizer, metrics=None):
    """One optimizer step; returns {'loss': the weighted total}."""
    images, labels = inputs
    loss = training.train_step(
        model, optimizer, images,
        lambda outputs: self.build_losses(labels, outputs, model.losses, metrics))
    return {self.loss: loss}

  def serve(self, model: tf_keras.Model, images: tf.Tensor,
            tasks=None) -> dict[str, dict[str, tf.Tensor]]:
    """uint8 images at the input size -> {task: the teacher signature's outputs}.

    Only the heads named in `tasks` run (all by default).
    """
    inputs = tf.cast(heads_lib.normalize_images(images), self.task_config.validation_data.dtype)
    outputs = model(inputs, training=False, tasks=tasks)
    return {task: self.heads[task].serve(output, self.input_size)
            for task, output in outputs.items()}

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    """Loss, plus each task's served outputs and the ground truth for `aggregate_logs`."""
    images, labels = inputs
    outputs = model(images, training=False)
    total = self.build_losses(labels, outputs, model.losses, metrics)
    served = {task: head.serve(outputs[task], self.input_size)
              for task, head in self.heads.items()}
    return {self.loss: total, "served": served,
            evaluate.GROUND_TRUTH: labels[evaluate.GROUND_TRUTH]}

  def inference_step(self, inputs, model: tf_keras.Model):
    return model(inputs, training=False)

  def aggregate_logs(self, state=None, step_outputs=None):
    """Scores every labeled eval image with its task's registry metric, on raw labels."""
    if state is None:
      state = {task: self.schema.tasks[task].metric() for task in self.heads}
    evaluate.aggregate(state, step_outputs[evaluate.GROUND_TRUTH], step_outputs["served"],
                       self.input_size)
    return state

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    """{'<task>/<metric>': value} over the whole eval set."""
    return {f"{task}/{name}": np.float32(value)
            for task, metric in aggregated_logs.items()
            for name, value in metric.result().items()}
