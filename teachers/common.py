"""What the teacher experiments share: CPU-sized backbone and schedule.

The project's machines are 2-core CPUs, so the registered teacher experiments
default to narrow ResNets at the default world's image size (a written world's
world.json has its own; the demo sets it from there) and short schedules;
`configs/teachers/*_full.yaml` holds what a real user would start from. Each
teacher also registers `<experiment>_tiny` (`must.configs.register_tiny`).
"""
from must import configs
from must.world import writer

small_resnet = configs.small_resnet
detection_generator = configs.detection_generator
norm_activation = configs.norm_activation
trainer = configs.trainer

RESTRICTIONS = ["task.train_data.is_training != None",
                "task.validation_data.is_training != None"]


def world_image_size() -> list[int]:
  """[height, width] of the default world's images."""
  return [writer.RenderConfig.height, writer.RenderConfig.width]


def world_num_classes(task: str) -> int:
  """The class count of `task`'s labels in the default world."""
  return writer.task_params()[task]["num_classes"]
