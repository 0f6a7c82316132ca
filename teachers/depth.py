"""The depth teacher: a Model Garden task and experiment for monocular depth.

Model Garden has no depth task, so this module registers one in its style
(typed configs, a `base_task.Task` and the `must_depth_teacher` experiment in
their factories), so `train_lib.run_experiment` trains it like a stock task.

The network is Model Garden blocks only: a backbone, a decoder and a
one-channel `SegmentationHead` in a `SegmentationModel`. It predicts relative
inverse depth (MiDaS style: valid up to scale and shift), trained with the
depth task's scale-and-shift-invariant loss (`must.tasks.depth`) and scored on
the raw eval labels with its metric through `must.evaluate`, as
`teachers.evaluate` and the report score it. Metric depth targets (the world's
ground truth) become 1/d; relative inverse depth (a pseudo label) is used as
it is. `TASK`, `EXPERIMENT`, `TASK_CONFIG` and `serve` are the teacher
interface (`teachers/__init__.py`).
"""
import dataclasses
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
import tf_keras
from must import configs
from must import evaluate
from must import schema as schema_lib
from must.tasks import depth as depth_task
from must.tasks import heads as heads_lib
from official.common import dataset_fn as dataset_fn_lib
from official.core import base_task
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.core import task_factory
from official.modeling import hyperparams
from official.vision.configs import backbones
from official.vision.configs import common
from official.vision.configs import decoders
from official.vision.dataloaders import input_reader_factory
from official.vision.dataloaders import parser as parser_lib
from official.vision.modeling import segmentation_model
from official.vision.modeling.backbones import factory as backbone_factory
from official.vision.modeling.decoders import factory as decoder_factory
from official.vision.modeling.heads import segmentation_heads
from official.vision.ops import preprocess_ops
from official.vision.tasks import semantic_segmentation
from teachers import common as teachers_common

TASK = depth_task.Depth.name
EXPERIMENT = "must_depth_teacher"


# -- Configs -------------------------------------------------------------------


@dataclasses.dataclass
class DepthHead(hyperparams.Config):
  """The dense head (Model Garden `SegmentationHead` with one output channel).

  Attributes:
    level: pyramid level the head predicts at (2 = stride 4).
    num_convs: 3x3 conv + norm + activation layers before the prediction.
    num_filters: filters of those convs and of the feature fusion; a multiple
      of 32 for 'panoptic_fpn_fusion' (it uses 32-group normalization).
    feature_fusion: 'panoptic_fpn_fusion' (every decoder level is convolved,
      upsampled to `level` and summed), 'pyramid_fusion' (levels are resized
      to `level` and summed) or '' (only the decoder's `level`).
    use_depthwise_convolution: depthwise-separable head convs.
    prediction_kernel_size: kernel size of the final linear conv.
    logit_activation: activation of the output ('' for none, e.g. 'relu').
  """
  level: int = 2
  num_convs: int = 2
  num_filters: int = 128
  feature_fusion: str = "panoptic_fpn_fusion"
  use_depthwise_convolution: bool = False
  prediction_kernel_size: int = 1
  logit_activation: str = ""


@dataclasses.dataclass
class DepthModel(hyperparams.Config):
  """The depth network: backbone, decoder, dense head."""
  input_size: List[Optional[int]] = dataclasses.field(default_factory=lambda: [None, None, 3])
  min_level: int = 2
  max_level: int = 5
  backbone: backbones.Backbone = dataclasses.field(
      default_factory=lambda: backbones.Backbone(type="resnet", resnet=backbones.ResNet()))
  decoder: decoders.Decoder = dataclasses.field(
      default_factory=lambda: decoders.Decoder(type="fpn", fpn=decoders.FPN()))
  head: DepthHead = dataclasses.field(default_factory=DepthHead)
  norm_activation: common.NormActivation = dataclasses.field(
      default_factory=common.NormActivation)


@dataclasses.dataclass
class DepthDataConfig(configs.SchemaDataConfig):
  """Input of the depth task: TFRecords in the MuST schema.

  Attributes:
    output_size: [height, width] images and targets are resized to; empty
      means the model's input size.
  """
  output_size: List[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DepthLosses(hyperparams.Config):
  """Loss settings.

  Attributes:
    loss_weight: multiplies the whole task loss.
    loss_type: 'mse' (squared error of the aligned prediction) or
      'trimmed_mae' (absolute error, the largest `trim_fraction` of each
      image's residuals left out).
    trim_fraction: fraction of residuals 'trimmed_mae' leaves out.
    l2_weight_decay: L2 regularization of the kernels (as in the stock tasks).
    gradient_matching_weight: weight of the MiDaS multi-scale gradient
      matching term (0 turns it off).
    gradient_matching_scales: number of scales of that term.
  """
  loss_weight: float = 1.0
  loss_type: str = "mse"
  trim_fraction: float = 0.2
  l2_weight_decay: float = 0.0
  gradient_matching_weight: float = 0.0
  gradient_matching_scales: int = 4


@dataclasses.dataclass
class DepthTaskConfig(cfg.TaskConfig):
  """The depth task."""
  model: DepthModel = dataclasses.field(default_factory=DepthModel)
  train_data: DepthDataConfig = dataclasses.field(
      default_factory=lambda: DepthDataConfig(is_training=True))
  validation_data: DepthDataConfig = dataclasses.field(
      default_factory=lambda: DepthDataConfig(is_training=False, aug_rand_hflip=False))
  losses: DepthLosses = dataclasses.field(default_factory=DepthLosses)
  init_checkpoint: Optional[str] = None
  init_checkpoint_modules: Union[str, List[str]] = "all"  # all, backbone and/or decoder


# -- Model ---------------------------------------------------------------------


def build_depth_model(input_specs: tf_keras.layers.InputSpec, model_config: DepthModel,
                      l2_regularizer: Optional[tf_keras.regularizers.Regularizer] = None
                      ) -> tf_keras.Model:
  """Backbone + decoder + one-channel fused dense head, as a SegmentationModel.

  The model maps normalized images [B, H, W, 3] to {'logits': [B, H / 2**level,
  W / 2**level, 1]}; `outputs_to_inverse_depth` upsamples that to [B, H, W].
  """
  head_config = model_config.head
  if not model_config.min_level <= head_config.level <= model_config.max_level:
    raise ValueError(f"head.level {head_config.level} must be within "
                     f"[min_level, max_level] = [{model_config.min_level}, "
                     f"{model_config.max_level}]")
  norm_activation = model_config.norm_activation
  backbone = backbone_factory.build_backbone(
      input_specs=input_specs, backbone_config=model_config.backbone,
      norm_activation_config=norm_activation, l2_regularizer=l2_regularizer)
  decoder = decoder_factory.build_decoder(
      input_specs=backbone.output_specs, model_config=model_config,
      l2_regularizer=l2_regularizer)
  decoder_filters = getattr(model_config.decoder.get(), "num_filters", 256)
  head = segmentation_heads.SegmentationHead(
      num_classes=1, level=head_config.level, num_convs=head_config.num_convs,
      num_filters=head_config.num_filters,
      use_depthwise_convolution=head_config.use_depthwise_convolution,
      prediction_kernel_size=head_config.prediction_kernel_size,
      feature_fusion=head_config.feature_fusion or None,
      decoder_min_level=model_config.min_level, decoder_max_level=model_config.max_level,
      num_decoder_filters=decoder_filters, activation=norm_activation.activation,
      logit_activation=head_config.logit_activation or None,
      use_sync_bn=norm_activation.use_sync_bn, norm_momentum=norm_activation.norm_momentum,
      norm_epsilon=norm_activation.norm_epsilon, kernel_regularizer=l2_regularizer)
  return segmentation_model.SegmentationModel(backbone, decoder, head)


def outputs_to_inverse_depth(outputs: Union[Mapping[str, tf.Tensor], tf.Tensor],
                             size: Any) -> tf.Tensor:
  """Model outputs -> float32 [B, H, W] relative inverse depth, resized to `size`."""
  logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs
  logits = tf.image.resize(tf.cast(logits, tf.float32), size, method="bilinear")
  return logits[..., 0]


# -- Input ---------------------------------------------------------------------


class Parser(parser_lib.Parser):
  """Decoded MuST example -> (normalized image, {'target', 'valid'}).

  'target' is the inverse depth [H, W] (1/d of metric depth, or the relative
  inverse depth as stored), 'valid' the pixels that have one.
  """

  def __init__(self, output_size: Sequence[int], aug_rand_hflip: bool = False,
               dtype: str = "float32"):
    self._output_size = list(output_size)
    self._aug_rand_hflip = aug_rand_hflip
    self._dtype = dtype

  def _prepare(self, data):
    inverse, valid = depth_task.target_inverse_depth(data[TASK])
    image = tf.image.resize(heads_lib.normalize_images(data["image"]), self._output_size,
                            method="bilinear")
    dense = tf.stack([inverse, tf.cast(valid, tf.float32)], axis=0)[..., None]
    dense = tf.image.resize(dense, self._output_size, method="nearest")[..., 0]
    return image, dense

  def _labels(self, image, dense):
    return tf.cast(image, self._dtype), {"target": dense[0], "valid": dense[1] > 0.5}

  def _parse_train_data(self, decoded_tensors):
    image, dense = self._prepare(decoded_tensors)
    if self._aug_rand_hflip:
      # dense is [2, H, W]: flipped along its last axis like the image's width.
      image, _, dense = preprocess_ops.random_horizontal_flip(image, masks=dense)
    return self._labels(image, dense)

  def _parse_eval_data(self, decoded_tensors):
    image, labels = self._labels(*self._prepare(decoded_tensors))
    return image, {**labels, evaluate.GROUND_TRUTH: evaluate.ground_truth(decoded_tensors,
                                                                          [TASK])}


# -- Task ------------------------------------------------------------------------


TASK_CONFIG = DepthTaskConfig


@task_factory.register_task_cls(DepthTaskConfig)
class DepthTask(base_task.Task):
  """Monocular relative depth (MiDaS-style scale-and-shift-invariant training)."""

  def build_model(self) -> tf_keras.Model:
    model_config = self.task_config.model
    input_specs = tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size))
    l2_weight_decay = self.task_config.losses.l2_weight_decay
    # Halved to match tf.nn.l2_loss, as the stock vision tasks do.
    l2_regularizer = (tf_keras.regularizers.l2(l2_weight_decay / 2.0)
                      if l2_weight_decay else None)
    height, width = model_config.input_size[:2]
    stride = 2**model_config.max_level
    if (height and height % stride) or (width and width % stride):
      raise ValueError(f"model.input_size {model_config.input_size[:2]} must be divisible "
                       f"by 2**max_level = {stride}")
    model = build_depth_model(input_specs, model_config, l2_regularizer)
    _ = model(tf_keras.Input(model_config.input_size), training=False)
    return model

  # Model Garden's segmentation restore: all of the model, or its backbone and/or decoder.
  initialize = semantic_segmentation.SemanticSegmentationTask.initialize

  def build_inputs(self, params: DepthDataConfig,
                   input_context: Optional[tf.distribute.InputContext] = None
                   ) -> tf.data.Dataset:
    """Batches of (images [B, H, W, 3], {'target', 'valid', and for eval `ground_truth`})."""
    decoder = schema_lib.Schema({TASK: {}})
    parser = Parser(self._output_size(params), aug_rand_hflip=params.aug_rand_hflip,
                    dtype=params.dtype)
    reader = input_reader_factory.input_reader_generator(
        params,
        dataset_fn=dataset_fn_lib.pick_dataset_fn(params.file_type),
        decoder_fn=decoder.decode,
        parser_fn=parser.parse_fn(params.is_training),
        transform_and_batch_fn=None if params.is_training else evaluate.padded_batch(params))
    return reader.read(input_context=input_context)

  def _output_size(self, params: DepthDataConfig) -> list[int]:
    output_size = list(params.output_size) or list(self.task_config.model.input_size[:2])
    if len(output_size) != 2 or not all(output_size):
      raise ValueError("set the data's output_size or a fixed model.input_size; "
                       f"got output_size={params.output_size}, "
                       f"input_size={self.task_config.model.input_size}")
    return output_size

  def build_losses(self, labels: Mapping[str, tf.Tensor], model_outputs: Any,
                   aux_losses: Optional[Any] = None) -> tf.Tensor:
    """The weighted scale-and-shift-invariant loss plus `aux_losses`, per replica.

    `model_outputs` are the model's ({'logits': [B, h, w, 1]}) or the
    prediction already at the labels' size [B, H, W].
    """
    losses = self.task_config.losses
    pred = model_outputs
    if isinstance(model_outputs, Mapping) or model_outputs.shape.rank == 4:
      pred = outputs_to_inverse_depth(model_outputs, tf.shape(labels["target"])[1:3])
    total = depth_task.scale_shift_invariant_loss(
        pred, labels["target"], labels["valid"],
        gradient_matching_weight=losses.gradient_matching_weight,
        gradient_matching_scales=losses.gradient_matching_scales,
        loss_type=losses.loss_type, trim_fraction=losses.trim_fraction)
    if aux_losses:
      total += tf.add_n(aux_losses)
    return losses.loss_weight * total

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    """The loss, plus the served depth and the ground truth for `aggregate_logs`."""
    features, labels = inputs
    pred = outputs_to_inverse_depth(self.inference_step(features, model),
                                    tf.shape(labels["target"])[1:3])
    return {self.loss: self.build_losses(labels, pred, aux_losses=model.losses),
            "served": {TASK: {depth_task.OUTPUT: pred}},
            evaluate.GROUND_TRUTH: labels[evaluate.GROUND_TRUTH]}

  def aggregate_logs(self, state=None, step_outputs=None):
    """Scores every labeled eval image with the depth task's metric, on raw labels."""
    if state is None:
      state = {TASK: depth_task.Depth().metric()}
    evaluate.aggregate(state, step_outputs[evaluate.GROUND_TRUTH], step_outputs["served"],
                       self._output_size(self.task_config.validation_data))
    return state

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    """{'abs_rel', 'delta_1.25'} over every valid pixel of the eval set."""
    return {name: np.float32(value) for name, value in aggregated_logs[TASK].result().items()}


# -- Experiments -----------------------------------------------------------------


@exp_factory.register_config_factory(EXPERIMENT)
def must_depth_teacher() -> cfg.ExperimentConfig:
  """The CPU-sized depth teacher on the procedural world (its default image size).

  ResNet-18 at a quarter of its width, a 64-filter FPN on levels 2..5 and a
  level-2 head on the summed pyramid; input paths are left empty (set them in
  the YAML file or with --params_override). On 2 shared CPU cores it trains at
  1.6-3 steps/s; its 800 steps (13 epochs of the 2000-image depth split) reach
  delta < 1.25 = 0.89 and AbsRel = 0.10 on the world's eval split.
  """
  height, width = teachers_common.world_image_size()
  batch_size = 32
  # The shared schedule, without gradient clipping, evaluated twice, keeping the best.
  trainer = configs.trainer(train_steps=800, learning_rate=1e-2, steps_per_loop=100)
  trainer.override({"validation_interval": 400, "max_to_keep": 3,
                    "best_checkpoint_export_subdir": "best_ckpt",
                    "best_checkpoint_eval_metric": "delta_1.25",
                    "best_checkpoint_metric_comp": "higher",
                    "optimizer_config": {"optimizer": {"adam": {"global_clipnorm": None}}}})
  return cfg.ExperimentConfig(
      task=DepthTaskConfig(
          model=DepthModel(
              input_size=[height, width, 3],
              min_level=2,
              max_level=5,
              backbone=configs.small_resnet(depth_multiplier=0.25),
              decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=64)),
              # Panoptic FPN fusion (group-normalized convs per level) costs
              # about 3x the step time on CPU for no gain at this size.
              head=DepthHead(level=2, num_convs=1, num_filters=64,
                             feature_fusion="pyramid_fusion"),
              norm_activation=common.NormActivation(use_sync_bn=False)),
          losses=DepthLosses(l2_weight_decay=1e-5, gradient_matching_weight=0.5),
          train_data=DepthDataConfig(is_training=True, global_batch_size=batch_size,
                                     output_size=[height, width], aug_rand_hflip=True),
          validation_data=DepthDataConfig(is_training=False, global_batch_size=batch_size,
                                          output_size=[height, width], aug_rand_hflip=False,
                                          drop_remainder=False)),
      trainer=trainer,
      restrictions=teachers_common.RESTRICTIONS)


TINY_EXPERIMENT = configs.register_tiny(EXPERIMENT)


# -- Export hook -----------------------------------------------------------------


def serve(model: tf_keras.Model, images: tf.Tensor, params: cfg.ExperimentConfig
          ) -> dict[str, tf.Tensor]:
  """uint8 images [B, H, W, 3] at the input size -> the depth task's output: float32
  [B, H, W] relative inverse depth (valid up to scale and shift; larger is nearer)."""
  inputs = tf.cast(heads_lib.normalize_images(images), params.task.validation_data.dtype)
  outputs = model(inputs, training=False)
  return {depth_task.OUTPUT: outputs_to_inverse_depth(outputs, tf.shape(images)[1:3])}
