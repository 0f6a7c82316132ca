"""Classification teacher: Model Garden's image classification task (ResNet).

Trained on the world's classification split (`image/class/label`); serves the
class distribution.
"""
import tensorflow as tf

from must import configs
from must.tasks import classification
from official.core import config_definitions as cfg
from official.core import exp_factory
from official.vision.configs import image_classification as ic_cfg
from official.vision.serving import image_classification as ic_serving
from teachers import common

TASK = classification.Classification.name
EXPERIMENT = "must_classification_teacher"
TASK_CONFIG = ic_cfg.ImageClassificationTask


@exp_factory.register_config_factory(EXPERIMENT)
def experiment() -> cfg.ExperimentConfig:
  """CPU-sized ResNet-18 (half width) classifier on the default world's images."""
  height, width = common.world_image_size()
  return cfg.ExperimentConfig(
      task=ic_cfg.ImageClassificationTask(
          model=ic_cfg.ImageClassificationModel(
              num_classes=common.world_num_classes(TASK), input_size=[height, width, 3],
              backbone=configs.small_resnet(), norm_activation=configs.norm_activation()),
          losses=ic_cfg.Losses(l2_weight_decay=1e-5, label_smoothing=0.1),
          # Random crops could cut away the object that decides the label.
          train_data=ic_cfg.DataConfig(is_training=True, global_batch_size=64,
                                       aug_crop=False, shuffle_buffer_size=2000),
          validation_data=ic_cfg.DataConfig(is_training=False, global_batch_size=64,
                                            drop_remainder=False,
                                            center_crop_fraction=1.0)),
      trainer=configs.trainer(train_steps=1500, learning_rate=2e-3),
      restrictions=common.RESTRICTIONS)


TINY_EXPERIMENT = configs.register_tiny(EXPERIMENT)


def outputs_from_model_garden(outputs: dict[str, tf.Tensor], images: tf.Tensor,
                              params: cfg.ExperimentConfig) -> dict[str, tf.Tensor]:
  """Model Garden classification serving outputs -> {'probs': [B, C]}."""
  del images, params
  return {"probs": tf.cast(outputs["probs"], tf.float32)}


model_garden_module = common.model_garden_module(ic_serving.ClassificationModule)
