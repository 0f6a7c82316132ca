"""Detection teacher: Model Garden's RetinaNet task (ResNet-FPN).

Trained on the world's detection split; serves boxes (normalized), scores,
classes and the number of detections.
"""
import tensorflow as tf

from must import configs
from must.tasks import detection
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.vision.configs import decoders
from official.vision.configs import retinanet as rn_cfg
from official.vision.serving import detection as det_serving
from teachers import common

TASK = detection.Detection.name
EXPERIMENT = "must_detection_teacher"
TASK_CONFIG = rn_cfg.RetinaNetTask


@exp_factory.register_config_factory(EXPERIMENT)
def experiment() -> cfg.ExperimentConfig:
  """CPU-sized RetinaNet: half-width ResNet-18, FPN P3-P5, small anchors."""
  height, width = common.world_image_size()
  return cfg.ExperimentConfig(
      task=rn_cfg.RetinaNetTask(
          model=rn_cfg.RetinaNet(
              num_classes=common.world_num_classes(TASK), input_size=[height, width, 3],
              min_level=3, max_level=5,
              anchor=rn_cfg.Anchor(num_scales=3, aspect_ratios=[0.5, 1.0, 2.0],
                                   anchor_size=2.0),
              backbone=configs.small_resnet(),
              decoder=decoders.Decoder(type="fpn", fpn=decoders.FPN(num_filters=64)),
              head=rn_cfg.RetinaNetHead(num_convs=2, num_filters=64),
              detection_generator=configs.detection_generator(),
              norm_activation=configs.norm_activation()),
          losses=rn_cfg.Losses(l2_weight_decay=1e-5),
          train_data=rn_cfg.DataConfig(
              is_training=True, global_batch_size=32, shuffle_buffer_size=2000,
              # No crowd boxes here; Model Garden's crowd filter breaks the tf.data
              # rewrite behind op determinism (`--seed`), so it is off.
              parser=rn_cfg.Parser(aug_rand_hflip=True, aug_scale_min=0.8, aug_scale_max=1.2,
                                   skip_crowd_during_training=False)),
          validation_data=rn_cfg.DataConfig(is_training=False, global_batch_size=32,
                                            drop_remainder=False),
          use_coco_metrics=True),
      trainer=configs.trainer(train_steps=2000, learning_rate=2e-3),
      restrictions=common.RESTRICTIONS)


TINY_EXPERIMENT = configs.register_tiny(EXPERIMENT)


def outputs_from_model_garden(outputs: dict[str, tf.Tensor], images: tf.Tensor,
                              params: cfg.ExperimentConfig) -> dict[str, tf.Tensor]:
  """Model Garden detection serving outputs -> normalized boxes, scores, classes.

  Model Garden returns boxes in pixels of the input image unless the export set
  `task.export_config.output_normalized_coordinates`; both are handled.
  """
  boxes = tf.cast(outputs["detection_boxes"], tf.float32)
  if not params.task.export_config.output_normalized_coordinates:
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    boxes = tf.clip_by_value(boxes / tf.concat([size, size], axis=0), 0.0, 1.0)
  return {
      "boxes": boxes,
      "scores": tf.cast(outputs["detection_scores"], tf.float32),
      "classes": tf.cast(outputs["detection_classes"], tf.int32),
      "num_detections": tf.cast(outputs["num_detections"], tf.int32),
  }


model_garden_module = common.model_garden_module(det_serving.DetectionModule)
