"""What the teacher experiments share: CPU-sized backbone and schedule.

The project's machines are 2-core CPUs, so the registered teacher experiments
default to narrow ResNets on the world's 96x96 images and short schedules;
`configs/teachers/*_full.yaml` holds what a real user would start from.
"""
from official.core import config_definitions as cfg
from official.modeling import optimization
from official.vision.configs import backbones
from official.vision.configs import common as common_cfg

IMAGE_SIZE = 96
NUM_CLASSES = 11  # the world's category ids 0..10, 0 = background


def small_resnet(model_id: int = 18, depth_multiplier: float = 0.5) -> backbones.Backbone:
  """A narrow ResNet (Model Garden's `depth_multiplier` scales every width)."""
  return backbones.Backbone(
      type="resnet", resnet=backbones.ResNet(model_id=model_id, depth_multiplier=depth_multiplier))


def norm_activation() -> common_cfg.NormActivation:
  return common_cfg.NormActivation(norm_momentum=0.9, norm_epsilon=1e-5, use_sync_bn=False)


def trainer(train_steps: int, learning_rate: float, warmup_steps: int = 100,
            steps_per_loop: int = 50) -> cfg.TrainerConfig:
  """Adam with linear warm-up and cosine decay; evaluates over the whole eval split."""
  return cfg.TrainerConfig(
      train_steps=train_steps,
      steps_per_loop=steps_per_loop,
      summary_interval=steps_per_loop,
      checkpoint_interval=steps_per_loop * 4,
      validation_interval=train_steps,
      validation_steps=-1,
      max_to_keep=2,
      optimizer_config=optimization.OptimizationConfig({
          "optimizer": {"type": "adam", "adam": {"global_clipnorm": 10.0}},
          "learning_rate": {"type": "cosine", "cosine": {
              "initial_learning_rate": learning_rate, "decay_steps": train_steps}},
          "warmup": {"type": "linear", "linear": {"warmup_steps": warmup_steps}},
      }))


RESTRICTIONS = ["task.train_data.is_training != None",
                "task.validation_data.is_training != None"]
