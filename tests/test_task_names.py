"""No code outside `must/tasks/` names a task: everything goes through the registry.

A task name written as a string literal anywhere else in the library (outside
docstrings) would break the promise that adding a task is adding one module.
Names that come from config and are looked up in the registry are fine.
"""
import ast
import pathlib

from must import tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ("must", "teachers", "beam_pipelines")


def _docstrings(tree: ast.AST) -> set[int]:
  nodes = (n for n in ast.walk(tree)
           if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))
  return {id(n.body[0].value) for n in nodes
          if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


def task_name_literals(root: pathlib.Path, names) -> list[str]:
  """'path:line: name' of every string literal equal to a task name outside must/tasks."""
  found = []
  for package in LIBRARY:
    for path in sorted((root / package).rglob("*.py")):
      relative = path.relative_to(root)
      if relative.parts[:2] == ("must", "tasks"):
        continue
      tree = ast.parse(path.read_text())
      docstrings = _docstrings(tree)
      found += [f"{relative}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and node.value in names
                and id(node) not in docstrings]
  return found


def test_no_task_name_outside_the_task_modules():
  assert task_name_literals(REPO, set(tasks.names())) == []


def test_the_check_finds_a_task_name(tmp_path):
  (tmp_path / "must" / "tasks").mkdir(parents=True)
  (tmp_path / "must" / "tasks" / "depth.py").write_text('NAME = "depth"\n')
  (tmp_path / "teachers").mkdir()
  (tmp_path / "teachers" / "x.py").write_text('"""About depth."""\nTASK = "depth"\n')
  (tmp_path / "beam_pipelines").mkdir()
  assert task_name_literals(tmp_path, {"depth"}) == ["teachers/x.py:2: 'depth'"]
