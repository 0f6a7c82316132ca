"""The BUILD files agree with the code, checked without Bazel (it cannot fetch its rules offline).

BUILD files are read with `ast` (Starlark call syntax is Python). Every .py file is in the srcs of
exactly one py_library / py_binary / py_test, and each target's deps are exactly what its srcs use:
the targets of the project modules they import, the conftest.py libraries pytest loads for a test,
the binaries they run by module name (`python -m must.train`; `data` may carry those instead), and
`requirement()` of the distributions of the third-party modules they import.
"""
import ast
import dataclasses
import fnmatch
import functools
import importlib.metadata
import os
import pathlib
import re
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RULES = ("py_library", "py_binary", "py_test")
# Distributions that code needs without importing them.
RUNTIME_ONLY = {"google-crc32c"}  # Beam's tfrecordio checksums with it where it is installed.
DISTRIBUTIONS = importlib.metadata.packages_distributions()  # {top-level module: [distribution]}


@dataclasses.dataclass
class Target:
  rule: str
  srcs: list[str]  # Paths from the repository root.
  deps: set[str]  # Absolute labels.
  requirements: set[str]  # Normalized distribution names.
  data: set[str]


def _normalize(distribution: str) -> str:
  return re.sub(r"[-_.]+", "-", distribution).lower()


def _label(package: str, label: str) -> str:
  """':x' -> '//package:x'; '//a/b' -> '//a/b:b'."""
  if label.startswith(":"):
    return f"//{package}{label}"
  path, _, name = label.partition(":")
  return f"{path}:{name or path.rsplit('/', 1)[-1]}"


def read_targets(root: pathlib.Path) -> dict[str, Target]:
  targets = {}
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = [d for d in subdirs if not d.startswith((".", "__"))]
    if "BUILD" not in files:
      continue
    package = pathlib.Path(directory).relative_to(root).as_posix().strip(".")
    for statement in ast.parse(pathlib.Path(directory, "BUILD").read_text()).body:
      call = getattr(statement, "value", None)
      if not (isinstance(call, ast.Call) and getattr(call.func, "id", None) in RULES):
        continue
      attrs = {keyword.arg: keyword.value for keyword in call.keywords}
      deps = getattr(attrs.get("deps"), "elts", [])
      targets[_label(package, ":" + attrs["name"].value)] = Target(
          rule=call.func.id,
          srcs=[f"{package}/{src}".lstrip("/") for src in ast.literal_eval(attrs["srcs"])],
          deps={_label(package, dep.value) for dep in deps if isinstance(dep, ast.Constant)},
          requirements={_normalize(dep.args[0].value) for dep in deps if isinstance(dep, ast.Call)},
          data={_label(package, entry) for entry in ast.literal_eval(attrs.get("data", "[]"))})
  return targets


def _module(path: str) -> str:
  return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _owner(module: str, owners: dict[str, str]) -> str | None:
  """The target of the longest known module that `module` is or lies in."""
  while module and module not in owners:
    module = module.rpartition(".")[0]
  return owners.get(module)


def _reachable(label: str, targets: dict[str, Target]) -> set[str]:
  seen, todo = set(), [label]
  while todo:
    target = targets.get(todo.pop())
    todo += [dep for dep in (target.deps | target.data if target else ()) if dep not in seen]
    seen |= set(todo)
  return seen


@functools.cache
def _namespace_members() -> dict[str, list[str]]:
  """'top.sub' -> its distributions, for the top-level names several distributions share
  (namespace packages such as `google`: google-auth's `google.auth`, protobuf's `google.protobuf`)."""
  shared = {top for top, dists in DISTRIBUTIONS.items() if len(set(dists)) > 1}
  members = {}
  for dist in importlib.metadata.distributions():
    for file in dist.files or ():
      parts = file.parts
      if len(parts) > 2 and parts[0] in shared:
        members.setdefault(f"{parts[0]}.{parts[1]}", set()).add(dist.metadata["Name"])
  return {name: sorted(dists) for name, dists in members.items()}


def _distributions(module: str) -> list[str]:
  """The distributions an imported module comes from: those of its top-level name, or of its
  first two levels where several distributions share the top-level name."""
  parts = module.split(".")
  narrowed = _namespace_members().get(".".join(parts[:2])) if len(parts) > 1 else None
  return narrowed or DISTRIBUTIONS.get(parts[0], [parts[0]])


def _names(source: str) -> tuple[set[str], set[str]]:
  """The modules a file imports, and the strings it holds (`-m` arguments among them)."""
  imported, strings = set(), set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      imported |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      imported |= {f"{node.module}.{alias.name}" for alias in node.names}
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      strings.add(node.value)
  return imported, strings


def problems(root: pathlib.Path) -> list[str]:
  targets = read_targets(root)
  owners = {_module(src): label for label, target in targets.items() for src in target.srcs}
  binaries = {_module(src): label for label, target in targets.items()
              if target.rule == "py_binary" for src in target.srcs}
  conftests = {label: target.srcs[0].rpartition("/")[0] for label, target in targets.items()
               if target.srcs[0].endswith("/conftest.py")}
  found = []
  for top in sorted({src.split("/")[0] for target in targets.values() for src in target.srcs}):
    for path in sorted(path.relative_to(root).as_posix() for path in (root / top).rglob("*.py")):
      homes = [label for label, target in targets.items() if path in target.srcs]
      if len(homes) != 1:
        found.append(f"{path} is in the srcs of {len(homes)} targets {homes}, not one")
  for label, target in sorted(targets.items()):
    imported, strings = set(), set()
    for src in target.srcs:
      if not (root / src).is_file():
        found.append(f"{label} lists the missing src {src}")
        continue
      src_imports, src_strings = _names((root / src).read_text())
      imported, strings = imported | src_imports, strings | src_strings
    # What it imports; its own package's __init__.py (run before it); conftests pytest loads.
    used = {_owner(module, owners) for module in imported}
    used |= {owners.get(_module(src).rpartition(".")[0]) for src in target.srcs}
    if target.rule == "py_test" or target.srcs[0].endswith("/conftest.py"):
      used |= {conftest for conftest, folder in conftests.items()
               if target.srcs[0].startswith(folder + "/")}
    used -= {None, label}
    ran = {binaries[name] for name in strings & binaries.keys()} - {label}
    for dep in sorted(used - target.deps | ran - _reachable(label, targets)):
      found.append(f"{label} misses the dep {dep}")
    for dep in sorted(target.deps - used - ran):
      found.append(f"{label} has the unused dep {dep}")
    outside = {module for module in imported if _owner(module, owners) is None
               and module.split(".")[0] not in sys.stdlib_module_names}
    third_party = {_normalize(dist) for module in outside for dist in _distributions(module)}
    for dist in sorted(third_party - target.requirements):
      found.append(f"{label} misses requirement(\"{dist}\")")
    for dist in sorted(target.requirements - third_party - RUNTIME_ONLY):
      found.append(f"{label} has the unused requirement(\"{dist}\")")
  return found


def test_build_files_match_the_code():
  assert problems(REPO) == []


def test_requirements_are_pinned_and_the_package_declares_its_own():
  """requirement() names a line of requirements.txt; pyproject.toml's dependencies are the lines
  of the requirements of the targets it packages."""
  lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
  pins = {_normalize(re.split(r"[=<>\[ ]", line)[0]): line
          for line in lines if line and not line.startswith("#")}
  targets = read_targets(REPO).values()
  assert set().union(*(target.requirements for target in targets)) <= pins.keys()
  project = tomllib.loads((REPO / "pyproject.toml").read_text())
  packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
  packaged = [target for target in targets if all(
      any(fnmatch.fnmatch(src.split("/")[0], package) for package in packages)
      for src in target.srcs)]
  needed = set().union(*(target.requirements for target in packaged))
  assert sorted(project["project"]["dependencies"]) == sorted(pins[name] for name in needed)


_FAKE_BUILD = """
load("@rules_python//python:defs.bzl", "py_library", "py_test")
py_library(name = "shapes", srcs = ["shapes.py"])
py_library(name = "area", srcs = ["area.py"], deps = [{area_deps}])
py_test(name = "area_test", srcs = ["area_test.py"], deps = [":area", requirement("pytest")])
"""


@pytest.mark.parametrize("area_deps, expected", [
    ('":shapes", requirement("numpy")', []),
    ('requirement("numpy")', ["//geometry:area misses the dep //geometry:shapes"]),
    ('":shapes", ":area_test", requirement("numpy")',
     ["//geometry:area has the unused dep //geometry:area_test"]),
    ('":shapes"', ['//geometry:area misses requirement("numpy")']),
    ('":shapes", requirement("numpy"), requirement("pyyaml")',
     ['//geometry:area has the unused requirement("pyyaml")']),
])
def test_checker_finds_a_missing_or_unused_dep(tmp_path, area_deps, expected):
  package = tmp_path / "geometry"
  package.mkdir()
  (package / "BUILD").write_text(_FAKE_BUILD.format(area_deps=area_deps))
  (package / "shapes.py").write_text("import math\nSIDE = math.sqrt(2)\n")
  (package / "area.py").write_text(
      "import numpy as np\nfrom geometry import shapes\nAREA = np.square(shapes.SIDE)\n")
  (package / "area_test.py").write_text("import pytest\nfrom geometry import area\n")
  assert problems(tmp_path) == expected
  (package / "stray.py").write_text("")
  assert problems(tmp_path)[:1] == ["geometry/stray.py is in the srcs of 0 targets [], not one"]
