"""The multi-task student network: a shared ResNet-FPN and one head per task.

Heads come from the task registry (`Task.student_head`); this module never
names a task. Every head reads the same features: the backbone's endpoints,
the FPN pyramid, and `fused`, every pyramid level resized to level 2 and summed.
"""
from typing import Mapping

import tensorflow as tf

import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
import tf_keras
from must.student import config as student_config
from must.tasks import heads as heads_lib
from official.vision.modeling.backbones import factory as backbone_factory
from official.vision.modeling.decoders import factory as decoder_factory


class MultiTaskModel(tf_keras.Model):
  """images [B, H, W, 3] (normalized) -> {task: that head's raw outputs}."""

  def __init__(self, backbone: tf_keras.Model, decoder: tf_keras.Model,
               task_heads: Mapping[str, tf_keras.layers.Layer], **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self.decoder = decoder
    self.task_heads = dict(task_heads)

  def features(self, images, training=None) -> dict:
    """The shared features every head reads."""
    endpoints = self.backbone(images, training=training)
    pyramid = self.decoder(endpoints, training=training)
    finest = min(pyramid, key=int)
    size = tf.shape(pyramid[finest])[1:3]
    fused = tf.add_n([pyramid[finest]] + [
        tf.cast(tf.image.resize(level, size, method="bilinear"), level.dtype)
        for key, level in pyramid.items() if key != finest])
    return {"backbone": endpoints, "pyramid": pyramid, "fused": fused}

  def call(self, images, training=None, tasks=None):
    """{task: raw outputs} of every head, or of the heads named in `tasks`."""
    features = self.features(images, training=training)
    return {task: head(features, training=training) for task, head in self.task_heads.items()
            if tasks is None or task in tasks}

  @property
  def checkpoint_items(self) -> dict:
    """What `init_checkpoint_modules` can name: backbone, decoder, and each head."""
    return {"backbone": self.backbone, "decoder": self.decoder, **self.task_heads}


def build_model(model_config: student_config.StudentModel,
                l2_regularizer=None) -> tuple[MultiTaskModel, dict[str, heads_lib.StudentHead]]:
  """Builds the student (weights initialized) and its task heads' logic."""
  if model_config.min_level != 2:
    raise ValueError("task.model.min_level must be 2: the pixel heads read the fused "
                     f"level-2 map; got {model_config.min_level}")
  input_specs = tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size))
  backbone = backbone_factory.build_backbone(
      input_specs=input_specs, backbone_config=model_config.backbone,
      norm_activation_config=model_config.norm_activation, l2_regularizer=l2_regularizer)
  decoder = decoder_factory.build_decoder(
      input_specs=backbone.output_specs, model_config=model_config,
      l2_regularizer=l2_regularizer)
  student_heads = student_config.build_heads(model_config, l2_regularizer)
  model = MultiTaskModel(backbone, decoder,
                         {task: head.build() for task, head in student_heads.items()})
  _ = model(tf_keras.Input(model_config.input_size), training=False)
  return model, student_heads
