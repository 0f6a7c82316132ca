"""Task registry: one module per task registers everything about it by name.

Every module in this package that defines a `Task` subclass decorated with
`register` is imported here, so adding a task is adding one file.
"""
import importlib
import pkgutil

from must.tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register(task_class: type[Task]) -> type[Task]:
  """Class decorator: adds a `Task` subclass to the registry under its name."""
  if task_class.name in _REGISTRY:
    raise ValueError(f"task {task_class.name!r} is registered twice")
  _REGISTRY[task_class.name] = task_class
  return task_class


def unregister(name: str) -> None:
  """Removes a task registered at run time (e.g. by a test)."""
  del _REGISTRY[name]


def get(name: str) -> type[Task]:
  """The task class registered as `name`; a miss lists the valid names."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(
        f"unknown task {name!r}; registered tasks: {sorted(_REGISTRY)}") from None


def build(name: str, **params) -> Task:
  """Makes the task `name` with its parameters (e.g. num_classes=11)."""
  return get(name)(**params)


def names() -> list[str]:
  """Registered task names, sorted."""
  return sorted(_REGISTRY)


for _module in pkgutil.iter_modules(__path__):
  if _module.name != "base":
    importlib.import_module(f"{__name__}.{_module.name}")
