"""pyproject.toml has a console script for every binary of the package, each one answering --help
(tests/test_bazel_build.py checks its dependencies), and pins what requirements.txt pins, which
requirements.lock resolves."""
import ast
import fnmatch
import pathlib
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
TEST_TOOLS = {"pytest"}


def _pins(lines) -> dict[str, str]:
  """'name[extras]==version' lines (comments, hashes and markers aside) -> {name[extras]: version}."""
  pins = {}
  for line in lines:
    line = line.split("#")[0].split(";")[0].strip().rstrip("\\").strip()
    if line and not line.startswith("-"):
      name, _, version = line.partition("==")
      pins[name.strip().lower()] = version.strip()
  return pins


def test_pyproject_pins_what_requirements_txt_pins():
  requirements = _pins((REPO / "requirements.txt").read_text().splitlines())
  project = PYPROJECT["project"]
  assert _pins(project["dependencies"]) == {
      name: version for name, version in requirements.items() if name not in TEST_TOOLS}
  assert _pins(project["optional-dependencies"]["test"]) == {
      name: version for name, version in requirements.items() if name in TEST_TOOLS}


def test_the_lock_resolves_requirements_txt():
  """Each pin of requirements.txt is in requirements.lock at its version, with hashes
  (`make lock` after an edit)."""
  text = (REPO / "requirements.lock").read_text()
  assert "requirements.txt" in text.splitlines()[1], "the lock names its input"
  locked = _pins(line for line in text.splitlines() if not line.startswith(" "))
  for name, version in _pins((REPO / "requirements.txt").read_text().splitlines()).items():
    assert locked.get(name.split("[")[0]) == version, (name, version, locked.get(name))
  assert text.count("--hash=sha256:") >= len(locked)


def _packaged(path: str) -> bool:
  patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
  return any(fnmatch.fnmatch(path.split("/")[0], pattern) for pattern in patterns)


def _source(module: str) -> ast.Module:
  return ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_names_a_function_without_required_arguments(script):
  module, _, name = SCRIPTS[script].partition(":")
  (function,) = [node for node in _source(module).body
                 if isinstance(node, ast.FunctionDef) and node.name == name]
  assert len(function.args.defaults) == len(function.args.args), SCRIPTS[script]


def test_every_binary_of_the_package_has_a_console_script():
  modules = {path.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
             for path in REPO.rglob("*.py") if _packaged(path.relative_to(REPO).as_posix())}
  binaries = {module for module in modules if any(
      isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
      for node in _source(module).body)}
  assert binaries == {target.partition(":")[0] for target in SCRIPTS.values()}
