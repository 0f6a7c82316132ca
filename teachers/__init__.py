"""Teachers: one module per teacher, each a registered Model Garden experiment.

A teacher module defines:
  TASK          the MuST task it teaches (a name in `must.tasks`);
  EXPERIMENT    its registered experiment (CPU-sized defaults);
  TASK_CONFIG   the Model Garden task config class its experiment uses;
and how it serves: either `model_garden_module(params, model, input_size)` (a
Model Garden export module) plus `outputs_from_model_garden(outputs, images,
params)`, or `serve(model, images, params)` for a task Model Garden lacks.
Every teacher is exported behind the teacher contract (`must.serving`): encoded
images of any size in, that task's outputs in each image's frame out. Models of
other origins plug in through an adapter config (`teachers.adapter`).
"""
import must  # noqa: F401  (legacy Keras switch before Model Garden loads)
from official.vision import registry_imports  # noqa: F401  (Model Garden's stock tasks)
from teachers import classification
from teachers import depth
from teachers import detection
from teachers import segmentation

TEACHERS = {module.TASK: module for module in (classification, detection, segmentation, depth)}


def experiments() -> list[str]:
  """The registered teacher experiment names."""
  return sorted(module.EXPERIMENT for module in TEACHERS.values())


def for_params(params):
  """The teacher module whose task config `params.task` is."""
  for module in TEACHERS.values():
    if isinstance(params.task, module.TASK_CONFIG):
      return module
  raise ValueError(f"no teacher trains a {type(params.task).__name__}; "
                   f"teacher experiments: {experiments()}")
