"""What the teacher experiments share.

The project's machines are 2-core CPUs, so the registered teacher experiments
default to narrow ResNets (`must.configs`) at the default world's image size (a
written world's world.json has its own; the demo sets it from there) and short
schedules; `configs/teachers/*_full.yaml` holds what a real user would start
from. Each teacher also registers `<experiment>_tiny` (`configs.register_tiny`).
"""
from must.world import writer

RESTRICTIONS = ["task.train_data.is_training != None",
                "task.validation_data.is_training != None"]


def world_image_size() -> list[int]:
  """[height, width] of the default world's images."""
  return [writer.RenderConfig.height, writer.RenderConfig.width]


def world_num_classes(task: str) -> int:
  """The class count of `task`'s labels in the default world."""
  return writer.task_params()[task]["num_classes"]


def model_garden_module(module_cls):
  """A teacher's `model_garden_module`: Model Garden's export module `module_cls`."""
  def build(params, model, input_size: list[int]):
    return module_cls(params, model=model, batch_size=None, input_image_size=input_size)
  return build
