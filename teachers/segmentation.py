"""Segmentation teacher: Model Garden's semantic segmentation task (ResNet-FPN).

Trained on the world's segmentation split (ignore label 255); serves per-pixel
classes and confidence.
"""
import tensorflow as tf

from must import configs
from must.tasks import segmentation
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.vision.configs import decoders
from official.vision.configs import semantic_segmentation as seg_cfg
from official.vision.serving import semantic_segmentation as seg_serving
from teachers import common

TASK = segmentation.Segmentation.name
EXPERIMENT = "must_segmentation_teacher"
TASK_CONFIG = seg_cfg.SemanticSegmentationTask


@exp_factory.register_config_factory(EXPERIMENT)
def experiment() -> cfg.ExperimentConfig:
  """CPU-sized ResNet-FPN segmenter: a 3-conv head on P2."""
  height, width = common.world_image_size()
  return cfg.ExperimentConfig(
      task=seg_cfg.SemanticSegmentationTask(
          model=seg_cfg.SemanticSegmentationModel(
              num_classes=common.world_num_classes(TASK), input_size=[height, width, 3],
              min_level=2, max_level=5,
              backbone=configs.small_resnet(),
              decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=64)),
              # The FPN's P2 already carries every coarser level top-down. (Model
              # Garden 2.20's factory does not pass decoder levels to the head,
              # so its 'panoptic_fpn_fusion' cannot be used from a config.)
              head=seg_cfg.SegmentationHead(level=2, num_convs=3, num_filters=64),
              norm_activation=configs.norm_activation()),
          losses=seg_cfg.Losses(l2_weight_decay=1e-5, ignore_label=255),
          allow_image_summary=False,
          train_data=seg_cfg.DataConfig(
              is_training=True, global_batch_size=32, output_size=[height, width],
              shuffle_buffer_size=2000, aug_scale_min=0.8, aug_scale_max=1.2),
          validation_data=seg_cfg.DataConfig(
              is_training=False, global_batch_size=32, output_size=[height, width],
              resize_eval_groundtruth=True, drop_remainder=False)),
      trainer=configs.trainer(train_steps=1500, learning_rate=2e-3),
      restrictions=common.RESTRICTIONS)


TINY_EXPERIMENT = configs.register_tiny(EXPERIMENT)


def outputs_from_model_garden(outputs: dict[str, tf.Tensor], images: tf.Tensor,
                              params: cfg.ExperimentConfig) -> dict[str, tf.Tensor]:
  """Model Garden segmentation logits -> per-pixel classes and confidence at the input size."""
  del params
  return segmentation.classes_and_confidence(outputs["logits"], tf.shape(images)[1:3])


model_garden_module = common.model_garden_module(seg_serving.SegmentationModule)
