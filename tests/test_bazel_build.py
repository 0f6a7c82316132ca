"""Checks the repository's Bazel files against the source tree, without Bazel.

Bazel cannot fetch its rules offline on the development machines, so nothing
here runs Bazel. Instead ``WORKSPACE`` and every ``BUILD`` / ``BUILD.bazel``
file are parsed with :mod:`ast` (never executed) as a small, declarative subset
of Starlark, and checked against the files on disk. This module is the one
place that knows these conventions; BUILD files must follow them:

* Loads, before any other statement of a BUILD file, from exactly these files::

      load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")
      load("@pypi//:requirements.bzl", "requirement")

* Top-level statements: ``load()``, string docstrings, comments, and calls of
  ``py_library``, ``py_binary``, ``py_test``, ``filegroup``, ``package`` and
  ``exports_files``. Attribute values are literals only: strings, integers,
  lists and (for ``env``) dicts; ``deps`` lists may also hold
  ``requirement("dist")``. No ``glob()``, variables, ``+`` or comprehensions.
* Labels: ``":name"``, ``"//pkg/path:name"``, ``"//pkg/path"`` (meaning
  ``//pkg/path:path``) and ``"//:name"`` for the root package.
* Python packages from PyPI come only through ``requirement("dist")``, whose
  ``dist`` must be pinned in ``requirements.txt``; ``WORKSPACE`` generates
  ``@pypi`` from that file with rules_python's ``pip_parse``.
* ``py_binary`` / ``py_test`` follow Bazel's main rule: ``main`` is given, or
  ``<name>.py`` is one of ``srcs`` (a single src with another name is not
  picked up by Bazel).

The self-tests at the bottom build tiny trees in ``tmp_path`` and prove that
each check reports what it should.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import re
import textwrap
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

BUILD_FILE_NAMES = ("BUILD.bazel", "BUILD")
PYTHON_ROOTS = ("must", "teachers", "beam_pipelines", "benchmarks", "tests")
REQUIREMENTS_FILE = "requirements.txt"
PIP_REPOSITORY = "pypi"
PYTHON_VERSION = "3.11"

RULES_PYTHON_DEFS = "@rules_python//python:defs.bzl"
RULES_PYTHON_PIP = "@rules_python//python:pip.bzl"
RULES_PYTHON_REPOSITORIES = "@rules_python//python:repositories.bzl"
HTTP_BZL = "@bazel_tools//tools/build_defs/repo:http.bzl"
REQUIREMENTS_BZL = f"@{PIP_REPOSITORY}//:requirements.bzl"

PY_RULES = ("py_library", "py_binary", "py_test")
EXPORTED_FILE = "exports_files"
BUILD_NATIVE = ("package", "exports_files", "filegroup")
BUILD_LOADS: Mapping[str, frozenset[str]] = {
    RULES_PYTHON_DEFS: frozenset(PY_RULES),
    REQUIREMENTS_BZL: frozenset({"requirement"}),
}
WORKSPACE_NATIVE = ("workspace", "register_toolchains")

_STRING = "string"
_INT = "integer"
_STRINGS = "list of strings"
_DEPS = "list of labels and requirement() calls"
_STRING_DICT = "dict of strings to strings"
_LIBRARY_ATTRS = {
    "name": _STRING,
    "srcs": _STRINGS,
    "deps": _DEPS,
    "data": _STRINGS,
    "imports": _STRINGS,
    "visibility": _STRINGS,
    "tags": _STRINGS,
}
_BINARY_ATTRS = {**_LIBRARY_ATTRS, "main": _STRING, "args": _STRINGS, "env": _STRING_DICT}
RULE_ATTRS: Mapping[str, Mapping[str, str]] = {
    "py_library": _LIBRARY_ATTRS,
    "py_binary": _BINARY_ATTRS,
    "py_test": {**_BINARY_ATTRS, "size": _STRING, "timeout": _STRING, "shard_count": _INT},
    "filegroup": {
        "name": _STRING,
        "srcs": _STRINGS,
        "data": _STRINGS,
        "visibility": _STRINGS,
        "tags": _STRINGS,
    },
}
ATTR_CHOICES = {
    "size": ("small", "medium", "large", "enormous"),
    "timeout": ("short", "moderate", "long", "eternal"),
}
PUBLIC = "//visibility:public"
PRIVATE = "//visibility:private"


# ---------------------------------------------------------------------------
# Starlark subset parser.


class StarlarkError(Exception):
    """A construct outside the accepted Starlark subset.

    Attributes:
        node: The offending AST node, used for its line number, or None.
    """

    def __init__(self, message: str, node: ast.AST | None = None):
        super().__init__(message)
        self.node = node


@dataclasses.dataclass(frozen=True)
class Requirement:
    """A ``requirement("dist")`` call: a PyPI distribution from ``@pypi``."""

    name: str


@dataclasses.dataclass(frozen=True)
class Symbol:
    """A name bound by ``load()`` and used as a value (WORKSPACE only)."""

    name: str


@dataclasses.dataclass
class Call:
    """One top-level call of a Starlark file.

    Attributes:
        function: The called symbol, with ``load()`` aliases resolved.
        args: Evaluated positional arguments.
        kwargs: Evaluated keyword arguments.
        line: Line of the call.
        loaded_from: Label of the ``.bzl`` file the symbol came from; None for
            native functions. For ``load()`` itself, the loaded label.
    """

    function: str
    args: list[Any]
    kwargs: dict[str, Any]
    line: int
    loaded_from: str | None


def _snippet(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _value(
    node: ast.AST,
    loaded: Mapping[str, tuple[str, str]],
    *,
    in_list: bool = False,
    allow_symbols: bool = False,
) -> Any:
    """Evaluates a literal expression.

    Args:
        node: Expression node.
        loaded: Local name -> (bzl label, original symbol) from ``load()``.
        in_list: Whether the node is a list element (where ``requirement()``
            is allowed).
        allow_symbols: Whether loaded names may be used as values.

    Returns:
        The Python value: str, int, bool, list, dict, Requirement or Symbol.

    Raises:
        StarlarkError: For anything that is not a plain literal.
    """
    if isinstance(node, ast.Constant) and type(node.value) in (str, int, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            if isinstance(element, ast.Starred):
                raise StarlarkError("*unpacking is not allowed", element)
        return [
            _value(e, loaded, in_list=True, allow_symbols=allow_symbols) for e in node.elts
        ]
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise StarlarkError("dict keys must be string literals", key or value)
            result[key.value] = _value(value, loaded, allow_symbols=allow_symbols)
        return result
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        if loaded.get(name) == (REQUIREMENTS_BZL, "requirement"):
            if not in_list:
                raise StarlarkError("requirement() is allowed only inside a deps list", node)
            if (
                len(node.args) != 1
                or node.keywords
                or not isinstance(node.args[0], ast.Constant)
                or not isinstance(node.args[0].value, str)
            ):
                raise StarlarkError(
                    'requirement() takes one string literal: requirement("dist")', node
                )
            return Requirement(node.args[0].value)
        if name == "requirement":
            raise StarlarkError(
                f"requirement() is used without load({REQUIREMENTS_BZL!r}, \"requirement\")",
                node,
            )
        if name == "glob":
            raise StarlarkError(
                "glob() is not allowed: list files explicitly so the tree can be checked",
                node,
            )
        raise StarlarkError(
            f"call {name}() is not allowed in a value; only literals and requirement()",
            node,
        )
    if allow_symbols and isinstance(node, ast.Name) and node.id in loaded:
        return Symbol(node.id)
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "glob":
            _value(sub, loaded)  # Raises the glob() error at its own line.
    raise StarlarkError(
        f"non-literal value {_snippet(node)!r}: only string/integer literals, lists, "
        "dicts and requirement() are allowed",
        node,
    )


def _parse_load(
    call: ast.Call,
    allowed_loads: Mapping[str, Collection[str]] | None,
    loaded: dict[str, tuple[str, str]],
) -> str:
    """Validates one ``load()`` and records its symbols; returns its label."""
    if not call.args or not (
        isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)
    ):
        raise StarlarkError("load() needs a .bzl label string as its first argument", call)
    label = call.args[0].value
    if not label.endswith(".bzl"):
        raise StarlarkError(f"load({label!r}): the label must name a .bzl file", call)
    symbols: list[tuple[str, str]] = []
    for arg in call.args[1:]:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            raise StarlarkError("load() symbols must be string literals", arg)
        symbols.append((arg.value, arg.value))
    for keyword in call.keywords:
        value = keyword.value
        if keyword.arg is None or not (
            isinstance(value, ast.Constant) and isinstance(value.value, str)
        ):
            raise StarlarkError("load() aliases must be alias = \"symbol\"", value)
        symbols.append((keyword.arg, value.value))
    if not symbols:
        raise StarlarkError(f"load({label!r}) loads no symbol", call)
    if allowed_loads is not None:
        if label not in allowed_loads:
            raise StarlarkError(
                f"load({label!r}) is not allowed; BUILD files load only from "
                f"{sorted(allowed_loads)}",
                call,
            )
        for _, original in symbols:
            if original not in allowed_loads[label]:
                raise StarlarkError(
                    f"load({label!r}, {original!r}): allowed symbols are "
                    f"{sorted(allowed_loads[label])}",
                    call,
                )
    for local, original in symbols:
        loaded[local] = (label, original)
    return label


def parse_starlark(
    path: pathlib.Path,
    display: str,
    *,
    native: Collection[str],
    allowed_loads: Mapping[str, Collection[str]] | None,
    loads_first: bool,
) -> tuple[list[Call], list[str]]:
    """Parses a BUILD or WORKSPACE file as a declarative Starlark subset.

    Each top-level statement is checked on its own, so one bad statement does
    not hide the others.

    Args:
        path: File to read.
        display: Path shown in messages (relative to the repository root).
        native: Functions callable without ``load()``.
        allowed_loads: bzl label -> symbols that may be loaded from it; None
            allows any load and lets loaded names be used as values
            (WORKSPACE).
        loads_first: Whether ``load()`` must precede every other call (BUILD).

    Returns:
        (calls, errors): the calls in file order, ``load()`` included (as a
        Call named ``load`` whose ``loaded_from`` is the label), and messages
        ``"<display>:<line>: ..."``.
    """
    try:
        module = ast.parse(path.read_text(encoding="utf-8"), filename=display)
    except SyntaxError as error:
        return [], [f"{display}:{error.lineno}: not valid Starlark: {error.msg}"]
    except UnicodeDecodeError as error:
        return [], [f"{display}:1: not UTF-8 text: {error}"]
    calls: list[Call] = []
    errors: list[str] = []
    loaded: dict[str, tuple[str, str]] = {}
    seen_other_call = False
    for stmt in module.body:
        try:
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                continue  # A docstring.
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                raise StarlarkError(
                    f"unsupported statement {_snippet(stmt)!r}: only load(), rule calls "
                    "and docstrings are allowed",
                    stmt,
                )
            call = stmt.value
            if not isinstance(call.func, ast.Name):
                raise StarlarkError(f"unsupported call {_snippet(call.func)}()", call)
            name = call.func.id
            if name == "load":
                if loads_first and seen_other_call:
                    raise StarlarkError("load() must come before every other statement", call)
                label = _parse_load(call, allowed_loads, loaded)
                calls.append(Call("load", [label], {}, stmt.lineno, label))
                continue
            seen_other_call = True
            if name in loaded:
                loaded_from, function = loaded[name]
            elif name in native:
                loaded_from, function = None, name
            else:
                sources = [
                    label for label, symbols in (allowed_loads or {}).items() if name in symbols
                ]
                if sources:
                    raise StarlarkError(
                        f"{name}() is used without load(); add load({sources[0]!r}, {name!r})",
                        call,
                    )
                raise StarlarkError(f"unknown rule or function {name}()", call)
            for arg in call.args:
                if isinstance(arg, ast.Starred):
                    raise StarlarkError("*args are not allowed", arg)
            for keyword in call.keywords:
                if keyword.arg is None:
                    raise StarlarkError("**kwargs are not allowed", keyword.value)
            symbols_ok = allowed_loads is None
            args = [_value(a, loaded, allow_symbols=symbols_ok) for a in call.args]
            kwargs = {
                k.arg: _value(k.value, loaded, allow_symbols=symbols_ok) for k in call.keywords
            }
            calls.append(Call(function, args, kwargs, stmt.lineno, loaded_from))
        except StarlarkError as error:
            line = getattr(error.node, "lineno", stmt.lineno)
            errors.append(f"{display}:{line}: {error}")
    return calls, errors


# ---------------------------------------------------------------------------
# Packages, targets and labels.


@dataclasses.dataclass
class Target:
    """A declared target: a rule or a file named by ``exports_files``.

    Attributes:
        kind: Rule name, or ``exports_files`` for an exported file.
        name: Target name (for an exported file, its path in the package).
        package: Package name; ``""`` for the root package.
        attrs: Evaluated attributes.
        where: ``"<build file>:<line>"`` of the declaration.
    """

    kind: str
    name: str
    package: str
    attrs: dict[str, Any]
    where: str

    @property
    def label(self) -> str:
        return f"//{self.package}:{self.name}"


@dataclasses.dataclass
class Package:
    """A directory with a BUILD file.

    Attributes:
        name: Package name (directory relative to the root, ``""`` for root).
        build_file: BUILD file path relative to the repository root.
        targets: Every declared target, duplicates included, in file order.
        default_visibility: From ``package()``, or None.
    """

    name: str
    build_file: str
    targets: list[Target] = dataclasses.field(default_factory=list)
    default_visibility: list[str] | None = None

    def find(self, name: str) -> Target | None:
        """Returns the first target called ``name``, or None."""
        return next((t for t in self.targets if t.name == name), None)


@dataclasses.dataclass
class Repo:
    """All packages of a source tree.

    Attributes:
        root: Repository root.
        packages: Package name -> Package.
        errors: Parse and structure errors of the BUILD files.
    """

    root: pathlib.Path
    packages: dict[str, Package]
    errors: list[str]

    def target(self, package: str, name: str) -> Target | None:
        """Returns the target ``//package:name`` if it is declared."""
        pkg = self.packages.get(package)
        return pkg.find(name) if pkg else None

    def rules(self) -> Iterator[Target]:
        """Yields every rule target (not exported files), package by package."""
        for name in sorted(self.packages):
            for target in self.packages[name].targets:
                if target.kind != EXPORTED_FILE:
                    yield target


def _skipped_dir(name: str) -> bool:
    return name == "__pycache__" or name.startswith(".") or name.startswith("bazel-")


def find_build_files(root: pathlib.Path) -> tuple[dict[str, pathlib.Path], list[str]]:
    """Finds every package of the tree.

    Args:
        root: Repository root.

    Returns:
        (package name -> BUILD file, errors).
    """
    found: dict[str, pathlib.Path] = {}
    errors: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
        present = [n for n in BUILD_FILE_NAMES if n in filenames]
        if not present:
            continue
        rel = pathlib.Path(dirpath).relative_to(root).as_posix()
        package = "" if rel == "." else rel
        if len(present) > 1:
            errors.append(
                f"{package or '.'}: has both BUILD.bazel and BUILD; Bazel reads only "
                "BUILD.bazel, keep one"
            )
        found[package] = pathlib.Path(dirpath) / present[0]
    return found, errors


def _join(package: str, path: str) -> str:
    return f"{package}/{path}" if package else path


def _pkg(package: str) -> str:
    return f"//{package}"


def owning_package(
    rel_path: str, packages: Collection[str], *, is_dir: bool = False
) -> str | None:
    """Returns the package of a file: its nearest ancestor with a BUILD file.

    Args:
        rel_path: Path relative to the repository root, ``/``-separated.
        packages: Package names.
        is_dir: Whether ``rel_path`` is a directory (a directory with its own
            BUILD file is its own package).

    Returns:
        The package name, or None when no ancestor has a BUILD file.
    """
    parts = rel_path.split("/")
    if not is_dir:
        parts = parts[:-1]
    while True:
        candidate = "/".join(parts)
        if candidate in packages:
            return candidate
        if not parts:
            return None
        parts.pop()


def _path_problem(path: str) -> str | None:
    """Says why a path is not a plain relative path inside a package, or None."""
    if not path:
        return "is empty"
    if path.startswith("/") or "\\" in path:
        return "must be a relative '/'-separated path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "must not contain empty, '.' or '..' segments"
    return None


def parse_label(label: str, current_package: str) -> tuple[str, str]:
    """Resolves a label to (package, name).

    Accepted forms: ``":name"``, ``"//pkg/path:name"``, ``"//pkg/path"``
    (= ``//pkg/path:path``) and ``"//:name"``.

    Args:
        label: The label string.
        current_package: Package the label is written in.

    Returns:
        (package, target name).

    Raises:
        ValueError: For any other form (bare names, external ``@repo``
            labels, malformed paths).
    """
    if label.startswith("@"):
        raise ValueError(
            f"external label {label!r}: use requirement(\"dist\") for PyPI packages"
        )
    if label.startswith(":"):
        package, name = current_package, label[1:]
    elif label.startswith("//"):
        body = label[2:]
        if ":" in body:
            package, name = body.split(":", 1)
        else:
            package, name = body, body.rsplit("/", 1)[-1]
            if not package:
                raise ValueError(f"label {label!r} names no target")
    else:
        raise ValueError(
            f"label {label!r} is not one of ':name', '//pkg:name', '//pkg', '//:name'"
        )
    if package and _path_problem(package):
        raise ValueError(f"label {label!r}: package path {_path_problem(package)}")
    if not name or ":" in name or _path_problem(name):
        raise ValueError(f"label {label!r}: invalid target name {name!r}")
    return package, name


def _is_label(entry: str) -> bool:
    return entry.startswith((":", "//", "@"))


def _matches_kind(value: Any, kind: str) -> bool:
    if kind == _STRING:
        return isinstance(value, str)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _STRINGS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _DEPS:
        return isinstance(value, list) and all(
            isinstance(v, (str, Requirement)) for v in value
        )
    if kind == _STRING_DICT:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise AssertionError(kind)


def _rule_target(call: Call, package: str, where: str) -> Target:
    """Validates a rule call's attributes and returns its target."""
    schema = RULE_ATTRS[call.function]
    if call.args:
        raise StarlarkError(f"{call.function}() takes keyword arguments only")
    unknown = sorted(set(call.kwargs) - set(schema))
    if unknown:
        raise StarlarkError(
            f"{call.function}() has no attribute {', '.join(unknown)}; allowed: "
            f"{', '.join(schema)}"
        )
    name = call.kwargs.get("name")
    if not isinstance(name, str):
        raise StarlarkError(f"{call.function}() needs name = \"...\"")
    if not name or ":" in name or _path_problem(name):
        raise StarlarkError(f"{call.function}(name = {name!r}): invalid target name")
    for attr, value in call.kwargs.items():
        if not _matches_kind(value, schema[attr]):
            raise StarlarkError(
                f"{call.function}(name = {name!r}): {attr} must be a {schema[attr]}"
            )
        if attr in ATTR_CHOICES and value not in ATTR_CHOICES[attr]:
            raise StarlarkError(
                f"{call.function}(name = {name!r}): {attr} must be one of "
                f"{', '.join(ATTR_CHOICES[attr])}"
            )
    return Target(call.function, name, package, dict(call.kwargs), where)


def load_repo(root: pathlib.Path) -> Repo:
    """Parses every BUILD file under ``root``.

    Args:
        root: Repository root.

    Returns:
        The packages, with every parse or structure error in ``errors``.
    """
    build_files, errors = find_build_files(root)
    packages: dict[str, Package] = {}
    for name in sorted(build_files):
        display = build_files[name].relative_to(root).as_posix()
        package = Package(name, display)
        packages[name] = package
        calls, parse_errors = parse_starlark(
            build_files[name],
            display,
            native=BUILD_NATIVE,
            allowed_loads=BUILD_LOADS,
            loads_first=True,
        )
        errors.extend(parse_errors)
        package_called = False
        for call in calls:
            where = f"{display}:{call.line}"
            try:
                if call.function == "load":
                    continue
                if call.function == "package":
                    if package_called or package.targets:
                        raise StarlarkError(
                            "package() must be called once, before any target"
                        )
                    package_called = True
                    if call.args or set(call.kwargs) - {"default_visibility"}:
                        raise StarlarkError("package() takes only default_visibility = [...]")
                    value = call.kwargs.get("default_visibility", [])
                    if not _matches_kind(value, _STRINGS):
                        raise StarlarkError("default_visibility must be a list of strings")
                    package.default_visibility = value
                elif call.function == EXPORTED_FILE:
                    if (
                        len(call.args) != 1
                        or not _matches_kind(call.args[0], _STRINGS)
                        or set(call.kwargs) - {"visibility"}
                    ):
                        raise StarlarkError(
                            'exports_files() takes a list of file names and optionally '
                            'visibility = [...]'
                        )
                    visibility = call.kwargs.get("visibility", [PUBLIC])
                    if not _matches_kind(visibility, _STRINGS):
                        raise StarlarkError("visibility must be a list of strings")
                    for file_name in call.args[0]:
                        package.targets.append(
                            Target(
                                EXPORTED_FILE, file_name, name, {"visibility": visibility}, where
                            )
                        )
                else:
                    package.targets.append(_rule_target(call, name, where))
            except StarlarkError as error:
                errors.append(f"{where}: {error}")
    return Repo(root, packages, errors)


# ---------------------------------------------------------------------------
# requirements.txt


_DIST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def normalize_distribution(spec: str) -> str:
    """Normalizes a requirement to its PEP 503 distribution name.

    Args:
        spec: A name or requirement line, e.g. ``"Apache_Beam[gcp]==2.77.0"``.

    Returns:
        Lowercase name with runs of ``-``, ``_``, ``.`` as ``-``, e.g.
        ``"apache-beam"``; extras, versions and markers dropped.

    Raises:
        ValueError: If ``spec`` does not start with a distribution name.
    """
    match = _DIST_NAME.match(spec.strip())
    if not match:
        raise ValueError(f"no distribution name in {spec!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def read_requirements(path: pathlib.Path) -> set[str] | None:
    """Reads the normalized distribution names of a requirements file.

    Args:
        path: The requirements file.

    Returns:
        Names, or None if the file does not exist. Comments, blank lines,
        option lines (``-r``, ``--hash`` ...) and bare URLs are skipped.
    """
    if not path.is_file():
        return None
    text = re.sub(r"\\\r?\n", " ", path.read_text(encoding="utf-8"))
    names = set()
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line or line.startswith("-") or ("://" in line and " @ " not in line):
            continue
        names.add(normalize_distribution(line))
    return names


# ---------------------------------------------------------------------------
# Checks. Each returns a list of messages, one per offender, empty when clean.


def iter_python_files(root: pathlib.Path, tops: Collection[str]) -> Iterator[str]:
    """Yields ``.py`` files under the given top-level directories.

    Args:
        root: Repository root.
        tops: Top-level directory names.

    Yields:
        Paths relative to ``root``, ``/``-separated, sorted per directory.
    """
    for top in tops:
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not _skipped_dir(d))
            for file_name in sorted(filenames):
                if file_name.endswith(".py"):
                    yield (pathlib.Path(dirpath) / file_name).relative_to(root).as_posix()


def _local_path(rel_path: str, package: str) -> str:
    return rel_path[len(package) + 1 :] if package else rel_path


def check_python_files_in_srcs(
    repo: Repo, tops: Collection[str] = PYTHON_ROOTS
) -> list[str]:
    """(a) Every project ``.py`` file is in the srcs of a py rule of its package."""
    problems = []
    for rel in iter_python_files(repo.root, tops):
        package = owning_package(rel, repo.packages)
        if package is None:
            problems.append(f"{rel}: no BUILD file in its directory or any parent")
            continue
        local = _local_path(rel, package)
        pkg = repo.packages[package]
        if not any(
            t.kind in PY_RULES and local in t.attrs.get("srcs", []) for t in pkg.targets
        ):
            problems.append(
                f"{rel}: not in the srcs of any py_library/py_binary/py_test in "
                f"{pkg.build_file} (as {local!r})"
            )
    return problems


def check_tests_are_py_tests(repo: Repo) -> list[str]:
    """(b) Every ``tests/**/test_*.py`` is a src of a py_test of its package."""
    problems = []
    for rel in iter_python_files(repo.root, ("tests",)):
        if not rel.rsplit("/", 1)[-1].startswith("test_"):
            continue
        package = owning_package(rel, repo.packages)
        if package is None:
            problems.append(f"{rel}: no BUILD file in its directory or any parent")
            continue
        local = _local_path(rel, package)
        pkg = repo.packages[package]
        owners = [t for t in pkg.targets if local in t.attrs.get("srcs", [])]
        if not any(t.kind == "py_test" for t in owners):
            found = ", ".join(f"{t.kind} {t.label}" for t in owners) or "no target"
            problems.append(
                f"{rel}: not the src of any py_test in {pkg.build_file} (listed by {found})"
            )
    return problems


def _check_file_entry(
    repo: Repo, target: Target, attr: str, entry: str, *, allow_dir: bool
) -> list[str]:
    prefix = f"{target.where}: {target.label}: {attr} entry {entry!r}"
    problem = _path_problem(entry)
    if problem:
        return [f"{prefix} {problem}"]
    rel = _join(target.package, entry)
    path = repo.root / rel
    if path.is_file():
        is_dir = False
    elif allow_dir and path.is_dir():
        is_dir = True
    elif path.exists():
        return [f"{prefix}: {rel} is not a file"]
    else:
        return [f"{prefix}: {rel} does not exist"]
    owner = owning_package(rel, repo.packages, is_dir=is_dir)
    if owner != target.package:
        return [
            f"{prefix}: {rel} belongs to package {_pkg(owner or '')}, which has its own "
            "BUILD file; refer to it by label instead of crossing the package boundary"
        ]
    return []


def _check_label_entry(repo: Repo, target: Target, attr: str, label: str) -> list[str]:
    prefix = f"{target.where}: {target.label}: {attr} entry {label!r}"
    try:
        package, name = parse_label(label, target.package)
    except ValueError as error:
        return [f"{prefix}: {error}"]
    if package not in repo.packages:
        return [f"{prefix}: no package {_pkg(package)} (no BUILD file in {package or '.'}/)"]
    if repo.target(package, name) is not None:
        return []
    rel = _join(package, name)
    path = repo.root / rel
    exists = path.is_file() or path.is_dir()
    if exists and owning_package(rel, repo.packages, is_dir=path.is_dir()) == package:
        if package == target.package:
            return []
        return [
            f"{prefix}: {rel} is a file of {_pkg(package)} that it does not export; add "
            f"exports_files([{name!r}]) to {repo.packages[package].build_file}"
        ]
    return [f"{prefix}: no target or file {name!r} in package {_pkg(package)}"]


def check_srcs_and_data_exist(repo: Repo) -> list[str]:
    """(c) Every srcs/data entry and exported file exists in its own package.

    ``srcs`` of py rules must be ``.py`` files of the package; ``data`` (and
    filegroup ``srcs``) may also name a directory or a label.
    """
    problems = []
    for name in sorted(repo.packages):
        for target in repo.packages[name].targets:
            if target.kind == EXPORTED_FILE:
                problems += _check_file_entry(
                    repo, target, EXPORTED_FILE, target.name, allow_dir=False
                )
                continue
            for attr in ("srcs", "data"):
                entries = target.attrs.get(attr, [])
                for entry in sorted({e for e in entries if entries.count(e) > 1}):
                    problems.append(
                        f"{target.where}: {target.label}: {entry!r} is listed twice in {attr}"
                    )
                python_srcs = attr == "srcs" and target.kind in PY_RULES
                for entry in entries:
                    if _is_label(entry):
                        if python_srcs:
                            problems.append(
                                f"{target.where}: {target.label}: srcs entry {entry!r} "
                                "must be a .py file of the package, not a label"
                            )
                        else:
                            problems += _check_label_entry(repo, target, attr, entry)
                        continue
                    if python_srcs and not entry.endswith(".py"):
                        problems.append(
                            f"{target.where}: {target.label}: srcs entry {entry!r} is not a "
                            ".py file (put other files in data)"
                        )
                        continue
                    problems += _check_file_entry(
                        repo, target, attr, entry, allow_dir=not python_srcs
                    )
    return problems


def _check_requirement(
    target: Target, requirement: Requirement, known: set[str] | None
) -> list[str]:
    prefix = f"{target.where}: {target.label}: requirement({requirement.name!r})"
    if not _DIST_NAME.fullmatch(requirement.name):
        return [f"{prefix} must name a bare distribution (no extras, versions or markers)"]
    normalized = normalize_distribution(requirement.name)
    if known is None:
        return [f"{prefix}: {REQUIREMENTS_FILE} does not exist"]
    if normalized not in known:
        return [f"{prefix}: {normalized!r} is not listed in {REQUIREMENTS_FILE}"]
    return []


def check_deps_resolve(repo: Repo) -> list[str]:
    """(d) Every dep label names a declared Python target; every requirement()
    names a distribution listed in ``requirements.txt``."""
    known = read_requirements(repo.root / REQUIREMENTS_FILE)
    problems = []
    for target in repo.rules():
        seen: set[Any] = set()
        for dep in target.attrs.get("deps", []):
            if dep in seen:
                problems.append(f"{target.where}: {target.label}: {dep!r} is listed twice in deps")
            seen.add(dep)
            if isinstance(dep, Requirement):
                problems += _check_requirement(target, dep, known)
                continue
            prefix = f"{target.where}: {target.label}: dep {dep!r}"
            try:
                package, name = parse_label(dep, target.package)
            except ValueError as error:
                problems.append(f"{prefix}: {error}")
                continue
            if package not in repo.packages:
                problems.append(
                    f"{prefix}: no package {_pkg(package)} (no BUILD file in {package or '.'}/)"
                )
                continue
            found = repo.target(package, name)
            if found is None:
                declared = ", ".join(
                    t.name for t in repo.packages[package].targets if t.kind != EXPORTED_FILE
                )
                problems.append(
                    f"{prefix}: no target {name!r} in package {_pkg(package)} "
                    f"(declared: {declared or 'none'})"
                )
            elif found is target:
                problems.append(f"{prefix}: a target cannot depend on itself")
            elif found.kind not in ("py_library", "py_binary"):
                problems.append(
                    f"{prefix}: is a {found.kind}; deps of Python rules must be py_library "
                    "(or py_binary) targets"
                )
    return problems


def _visibility_problem(entry: str) -> str | None:
    if entry in (PUBLIC, PRIVATE):
        return None
    match = re.fullmatch(r"//([^:]*):(__pkg__|__subpackages__)", entry)
    if not match or (match.group(1) and _path_problem(match.group(1))):
        return (
            f"visibility {entry!r} is not one of {PUBLIC!r}, {PRIVATE!r}, "
            "'//pkg:__pkg__', '//pkg:__subpackages__'"
        )
    return None


def _effective_visibility(repo: Repo, target: Target) -> list[str]:
    if "visibility" in target.attrs:
        return target.attrs["visibility"]
    default = repo.packages[target.package].default_visibility
    return default if default is not None else [PRIVATE]


def is_visible(repo: Repo, target: Target, from_package: str) -> bool:
    """Whether ``target`` may be used by a target of ``from_package``."""
    if target.package == from_package:
        return True
    for entry in _effective_visibility(repo, target):
        if entry == PUBLIC:
            return True
        match = re.fullmatch(r"//([^:]*):(__pkg__|__subpackages__)", entry)
        if not match:
            continue
        package, scope = match.groups()
        if package == from_package:
            return True
        if scope == "__subpackages__" and (
            not package or from_package.startswith(package + "/")
        ):
            return True
    return False


def check_visibility(repo: Repo) -> list[str]:
    """Every label used across packages is visible; visibility specs are valid."""
    problems = []
    for name in sorted(repo.packages):
        pkg = repo.packages[name]
        for entry in pkg.default_visibility or []:
            if _visibility_problem(entry):
                problems.append(f"{pkg.build_file}: package(): {_visibility_problem(entry)}")
        for target in pkg.targets:
            for entry in target.attrs.get("visibility", []):
                if _visibility_problem(entry):
                    problems.append(
                        f"{target.where}: {target.label}: {_visibility_problem(entry)}"
                    )
    for target in repo.rules():
        labels = [d for d in target.attrs.get("deps", []) if isinstance(d, str)]
        labels += [d for d in target.attrs.get("data", []) if _is_label(d)]
        labels += [s for s in target.attrs.get("srcs", []) if _is_label(s)]
        for label in labels:
            try:
                package, name = parse_label(label, target.package)
            except ValueError:
                continue  # Reported by the resolution checks.
            used = repo.target(package, name)
            if used is not None and not is_visible(repo, used, target.package):
                problems.append(
                    f"{target.where}: {target.label} uses {used.label}, which is not visible "
                    f"to {_pkg(target.package)}; add visibility = "
                    f"[\"{_pkg(target.package)}:__pkg__\"] (or a package default_visibility) "
                    f"at {used.where}"
                )
    return problems


def check_dependency_cycles(repo: Repo) -> list[str]:
    """Bazel rejects cycles in ``deps``; reports each cycle once."""
    graph: dict[str, list[str]] = {}
    for target in repo.rules():
        edges = []
        for dep in target.attrs.get("deps", []):
            if not isinstance(dep, str):
                continue
            try:
                package, name = parse_label(dep, target.package)
            except ValueError:
                continue
            if repo.target(package, name) is not None:
                edges.append(f"//{package}:{name}")
        graph.setdefault(target.label, edges)
    problems = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done.
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                problems.append("dependency cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return problems


def check_names_and_mains(repo: Repo) -> list[str]:
    """(e) Target names are unique per package; binaries and tests have a main.

    Bazel's rule: ``main`` if given, else ``<name>.py``, must be exactly one of
    ``srcs`` (matched on the path's end), and the file must exist.
    """
    problems = []
    for name in sorted(repo.packages):
        pkg = repo.packages[name]
        by_name: dict[str, list[Target]] = {}
        for target in pkg.targets:
            by_name.setdefault(target.name, []).append(target)
        for target_name, targets in by_name.items():
            if len(targets) > 1:
                places = ", ".join(t.where for t in targets)
                problems.append(
                    f"{pkg.build_file}: target name {target_name!r} is declared "
                    f"{len(targets)} times ({places})"
                )
    for target in repo.rules():
        if target.kind not in ("py_binary", "py_test"):
            continue
        prefix = f"{target.where}: {target.kind} {target.label}"
        srcs = target.attrs.get("srcs", [])
        main = target.attrs.get("main")
        if main is None:
            if target.name.endswith(".py"):
                problems.append(f"{prefix}: name must not end in '.py'")
                continue
            wanted = target.name + ".py"
            matches = [s for s in srcs if s == wanted or s.endswith("/" + wanted)]
            if len(matches) != 1:
                problems.append(
                    f"{prefix}: sets no main, so Bazel needs exactly one src named "
                    f"{wanted!r} (found {len(matches)}); set main = \"<file>.py\""
                )
                continue
            main_file = matches[0]
        else:
            main_file = main
            if main.startswith(("//", ":", "@")):
                try:
                    package, main_file = parse_label(main, target.package)
                except ValueError as error:
                    problems.append(f"{prefix}: main: {error}")
                    continue
                if package != target.package:
                    problems.append(f"{prefix}: main {main!r} must be a file of its own package")
                    continue
            if not main_file.endswith(".py"):
                problems.append(f"{prefix}: main {main!r} is not a .py file")
                continue
            if main_file not in srcs:
                problems.append(f"{prefix}: main {main!r} is not in srcs")
        if not (repo.root / _join(target.package, main_file)).is_file():
            problems.append(
                f"{prefix}: main file {_join(target.package, main_file)} does not exist"
            )
    return problems


def _repository_of(label: str) -> str | None:
    return label[1:].split("//", 1)[0] if label.startswith("@") else None


def check_workspace(root: pathlib.Path) -> list[str]:
    """(f) ``WORKSPACE`` sets up rules_python, Python 3.11 and ``@pypi``.

    It must fetch rules_python with ``http_archive`` (pinned by sha256),
    register a Python 3.11 toolchain, declare ``pip_parse(name = "pypi",
    requirements_lock = "//:requirements.txt")`` for an existing file, and call
    ``install_deps()``; every ``load("@repo//...")`` must follow the rule that
    declares ``@repo``.
    """
    path = root / "WORKSPACE"
    if not path.is_file():
        return ["WORKSPACE: missing at the repository root"]
    calls, problems = parse_starlark(
        path, "WORKSPACE", native=WORKSPACE_NATIVE, allowed_loads=None, loads_first=False
    )
    declared = {"bazel_tools"}
    for call in calls:
        if call.function == "load":
            repository = _repository_of(call.args[0])
            if repository and not any(
                repository == d or repository.startswith(d + "_") for d in declared
            ):
                problems.append(
                    f"WORKSPACE:{call.line}: load({call.args[0]!r}) comes before any rule "
                    f"declares @{repository}"
                )
        elif isinstance(call.kwargs.get("name"), str):
            declared.add(call.kwargs["name"])

    def calls_of(function: str, bzl: str) -> list[Call]:
        return [c for c in calls if c.function == function and c.loaded_from == bzl]

    archives = [
        c for c in calls_of("http_archive", HTTP_BZL) if c.kwargs.get("name") == "rules_python"
    ]
    if not archives:
        problems.append(
            f'WORKSPACE: no http_archive(name = "rules_python", ...) loaded from {HTTP_BZL!r}'
        )
    for archive in archives:
        sha = archive.kwargs.get("sha256")
        if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-f]{64}", sha)):
            problems.append(f"WORKSPACE:{archive.line}: rules_python needs a sha256")
        if not (archive.kwargs.get("url") or archive.kwargs.get("urls")):
            problems.append(f"WORKSPACE:{archive.line}: rules_python needs url or urls")
    if not calls_of("py_repositories", RULES_PYTHON_REPOSITORIES):
        problems.append(
            f"WORKSPACE: py_repositories() from {RULES_PYTHON_REPOSITORIES!r} is not called"
        )
    toolchains = [
        c
        for c in calls_of("python_register_toolchains", RULES_PYTHON_REPOSITORIES)
        if str(c.kwargs.get("python_version", "")).split(".")[:2] == PYTHON_VERSION.split(".")
    ]
    if not toolchains:
        problems.append(
            f'WORKSPACE: no python_register_toolchains(python_version = "{PYTHON_VERSION}") '
            f"from {RULES_PYTHON_REPOSITORIES!r}"
        )
    pips = [
        c for c in calls_of("pip_parse", RULES_PYTHON_PIP) if c.kwargs.get("name") == PIP_REPOSITORY
    ]
    if not pips:
        problems.append(
            f'WORKSPACE: no pip_parse(name = "{PIP_REPOSITORY}", ...) loaded from '
            f"{RULES_PYTHON_PIP!r}; BUILD files load requirement() from {REQUIREMENTS_BZL!r}"
        )
    for pip in pips:
        lock = pip.kwargs.get("requirements_lock")
        prefix = f"WORKSPACE:{pip.line}: pip_parse requirements_lock {lock!r}"
        if not isinstance(lock, str):
            problems.append(f'{prefix}: must be a label string like "//:{REQUIREMENTS_FILE}"')
            continue
        try:
            package, name = parse_label(lock, "")
        except ValueError as error:
            problems.append(f"{prefix}: {error}")
            continue
        rel = _join(package, name)
        packages, _ = find_build_files(root)
        if rel != REQUIREMENTS_FILE:
            problems.append(f"{prefix}: names {rel}, not the project's {REQUIREMENTS_FILE}")
        if not (root / rel).is_file():
            problems.append(f"{prefix}: {rel} does not exist")
        if package not in packages:
            problems.append(
                f"{prefix}: Bazel resolves it through package {_pkg(package)}, which has no "
                "BUILD file"
            )
        installs = [c for c in calls_of("install_deps", REQUIREMENTS_BZL) if c.line > pip.line]
        if not installs:
            problems.append(
                f"WORKSPACE: install_deps() from {REQUIREMENTS_BZL!r} is not called after "
                f"pip_parse (line {pip.line})"
            )
    return problems


# ---------------------------------------------------------------------------
# The real tree. These fail, listing every offender, until the BUILD files
# match the code.


@pytest.fixture(scope="module")
def repo() -> Repo:
    return load_repo(REPO_ROOT)


def _assert_clean(problems: list[str], what: str) -> None:
    assert not problems, f"{what} ({len(problems)}):\n  " + "\n  ".join(problems)


def test_build_files_parse(repo: Repo) -> None:
    _assert_clean(repo.errors, "BUILD files outside the accepted Starlark subset")


def test_every_python_file_is_in_srcs(repo: Repo) -> None:
    _assert_clean(check_python_files_in_srcs(repo), "Python files missing from srcs")


def test_every_test_file_is_a_py_test(repo: Repo) -> None:
    _assert_clean(check_tests_are_py_tests(repo), "test files without a py_test")


def test_srcs_and_data_exist(repo: Repo) -> None:
    _assert_clean(check_srcs_and_data_exist(repo), "bad srcs/data entries")


def test_deps_resolve(repo: Repo) -> None:
    _assert_clean(check_deps_resolve(repo), "unresolved deps")


def test_deps_are_visible(repo: Repo) -> None:
    _assert_clean(check_visibility(repo), "visibility problems")


def test_no_dependency_cycles(repo: Repo) -> None:
    _assert_clean(check_dependency_cycles(repo), "dependency cycles")


def test_target_names_unique_and_mains_exist(repo: Repo) -> None:
    _assert_clean(check_names_and_mains(repo), "target name or main problems")


def test_workspace_declares_pip_repository() -> None:
    _assert_clean(check_workspace(REPO_ROOT), "WORKSPACE problems")


# ---------------------------------------------------------------------------
# Self-tests: the checker accepts a good tree and reports each kind of breakage.


_GOOD_TREE = {
    "WORKSPACE": """\
        workspace(name = "fake")

        load("@bazel_tools//tools/build_defs/repo:http.bzl", "http_archive")

        http_archive(
            name = "rules_python",
            sha256 = "778aaeab3e6cfd56d681c89f5c10d7ad6bf8d2f1a72de9de55b23081b2d31618",
            strip_prefix = "rules_python-0.34.0",
            url = "https://example.invalid/rules_python-0.34.0.tar.gz",
        )

        load(
            "@rules_python//python:repositories.bzl",
            "py_repositories",
            "python_register_toolchains",
        )

        py_repositories()

        python_register_toolchains(name = "python_3_11", python_version = "3.11")

        load("@rules_python//python:pip.bzl", "pip_parse")

        pip_parse(
            name = "pypi",
            python_interpreter_target = "@python_3_11_host//:python",
            requirements_lock = "//:requirements.txt",
        )

        load("@pypi//:requirements.bzl", "install_deps")

        install_deps()
        """,
    "BUILD": """\
        # Root package.
        exports_files(["requirements.txt"])
        """,
    "requirements.txt": """\
        # Pinned.
        absl-py==2.1.0
        numpy==1.26.4  # arrays
        Apache_Beam[gcp]==2.77.0 ; python_version >= "3.11"
        --hash=sha256:0000
        """,
    "must/BUILD": '''\
        """The library."""

        load("@rules_python//python:defs.bzl", "py_library")
        load("@pypi//:requirements.bzl", "requirement")

        package(default_visibility = ["//visibility:public"])

        py_library(
            name = "must",
            srcs = [
                "__init__.py",
                "core.py",
                "world/__init__.py",
            ],
            deps = [requirement("numpy")],
        )
        ''',
    "must/__init__.py": "",
    "must/core.py": "",
    "must/world/__init__.py": "",
    "teachers/BUILD": """\
        load("@rules_python//python:defs.bzl", "py_binary")
        load("@pypi//:requirements.bzl", "requirement")

        py_binary(
            name = "train",
            srcs = ["train.py"],
            deps = [
                "//must",
                requirement("absl_py"),
            ],
        )
        """,
    "teachers/train.py": "",
    "configs/BUILD": """\
        exports_files(["demo.yaml"])

        filegroup(
            name = "all",
            srcs = ["demo.yaml", "sub"],
            visibility = ["//tests:__subpackages__"],
        )
        """,
    "configs/demo.yaml": "a: 1\n",
    "configs/sub/more.yaml": "b: 2\n",
    "tests/BUILD": """\
        load("@rules_python//python:defs.bzl", "py_library", "py_test")
        load("@pypi//:requirements.bzl", "requirement")

        py_library(
            name = "conftest",
            srcs = ["conftest.py"],
            visibility = ["//tests:__subpackages__"],
        )

        py_test(
            name = "test_core",
            size = "small",
            srcs = ["test_core.py"],
            data = ["//configs:demo.yaml", "//configs:all"],
            env = {"TF_USE_LEGACY_KERAS": "1"},
            shard_count = 2,
            deps = [
                ":conftest",
                "//must:must",
                requirement("apache-beam"),
            ],
        )

        py_test(
            name = "run_all",
            srcs = ["test_other.py", "runner.py"],
            main = "runner.py",
            deps = [":conftest"],
        )
        """,
    "tests/conftest.py": "",
    "tests/test_core.py": "",
    "tests/test_other.py": "",
    "tests/runner.py": "",
    "tests/must/BUILD": """\
        load("@rules_python//python:defs.bzl", "py_test")

        py_test(
            name = "test_world",
            srcs = ["test_world.py"],
            deps = ["//tests:conftest", "//must"],
        )
        """,
    "tests/must/test_world.py": "",
}


def _make_tree(
    root: pathlib.Path,
    edits: tuple[tuple[str, str, str], ...] = (),
    add: Mapping[str, str] | None = None,
    remove: tuple[str, ...] = (),
) -> pathlib.Path:
    """Writes the good tree, changed by ``edits`` (path, old, new), ``add``, ``remove``."""
    files = {path: textwrap.dedent(text) for path, text in _GOOD_TREE.items()}
    for path, old, new in edits:
        assert old in files[path], f"self-test edit does not apply: {old!r} not in {path}"
        files[path] = files[path].replace(old, new, 1)
    files.update({path: textwrap.dedent(text) for path, text in (add or {}).items()})
    for path in remove:
        del files[path]
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return root


def _all_problems(root: pathlib.Path) -> dict[str, list[str]]:
    repo = load_repo(root)
    return {
        "parse": repo.errors,
        "python_files": check_python_files_in_srcs(repo),
        "tests": check_tests_are_py_tests(repo),
        "files": check_srcs_and_data_exist(repo),
        "deps": check_deps_resolve(repo),
        "visibility": check_visibility(repo),
        "cycles": check_dependency_cycles(repo),
        "names": check_names_and_mains(repo),
        "workspace": check_workspace(root),
    }


def test_checker_accepts_good_tree(tmp_path: pathlib.Path) -> None:
    problems = _all_problems(_make_tree(tmp_path))
    assert problems == {key: [] for key in problems}


@dataclasses.dataclass(frozen=True)
class _Broken:
    """A breakage of the good tree and what the checker must say about it."""

    id: str
    check: str
    expect: tuple[str, ...]
    edits: tuple[tuple[str, str, str], ...] = ()
    add: Mapping[str, str] = dataclasses.field(default_factory=dict)
    remove: tuple[str, ...] = ()


_BROKEN = [
    _Broken(
        "missing_src",
        "files",
        ("must/BUILD:8:", "//must:must", "'gone.py'", "must/gone.py does not exist"),
        edits=(("must/BUILD", '"core.py",', '"core.py",\n        "gone.py",'),),
    ),
    _Broken(
        "missing_data_file",
        "files",
        ("tests/BUILD:10:", "//configs:nope.yaml", "no target or file"),
        edits=(("tests/BUILD", "//configs:demo.yaml", "//configs:nope.yaml"),),
    ),
    _Broken(
        "missing_exported_file",
        "files",
        ("configs/BUILD:1:", "configs/demo.yaml does not exist"),
        remove=("configs/demo.yaml",),
    ),
    _Broken(
        "data_file_not_exported",
        "files",
        ("//configs:sub/more.yaml", "exports_files(['sub/more.yaml'])"),
        edits=(("tests/BUILD", '"//configs:all"', '"//configs:sub/more.yaml"'),),
    ),
    _Broken(
        "src_crosses_package_boundary",
        "files",
        ("tests/BUILD:4:", "tests/must/test_world.py belongs to package //tests/must"),
        edits=(("tests/BUILD", '["conftest.py"]', '["conftest.py", "must/test_world.py"]'),),
    ),
    _Broken(
        "src_not_python",
        "files",
        ("'demo.yaml' is not a .py file",),
        edits=(("must/BUILD", '"core.py",', '"core.py",\n        "demo.yaml",'),),
        add={"must/demo.yaml": ""},
    ),
    _Broken(
        "unlisted_python_file",
        "python_files",
        ("must/extra.py: not in the srcs", "must/BUILD"),
        add={"must/extra.py": ""},
    ),
    _Broken(
        "unlisted_in_subdirectory",
        "python_files",
        ("teachers/lib/util.py", "'lib/util.py'"),
        add={"teachers/lib/util.py": ""},
    ),
    _Broken(
        "benchmark_without_package",
        "python_files",
        ("benchmarks/bench.py", "in BUILD"),
        add={"benchmarks/bench.py": ""},
    ),
    _Broken(
        "test_in_py_library",
        "tests",
        ("tests/test_extra.py: not the src of any py_test", "py_library //tests:conftest"),
        edits=(("tests/BUILD", '["conftest.py"]', '["conftest.py", "test_extra.py"]'),),
        add={"tests/test_extra.py": ""},
    ),
    _Broken(
        "test_not_listed",
        "tests",
        ("tests/must/test_new.py", "listed by no target"),
        add={"tests/must/test_new.py": ""},
    ),
    _Broken(
        "dangling_dep",
        "deps",
        ("tests/BUILD:10:", "//tests:test_core", "'//must:nope'", "declared: must"),
        edits=(("tests/BUILD", '"//must:must"', '"//must:nope"'),),
    ),
    _Broken(
        "dep_on_missing_package",
        "deps",
        ("'//nowhere:lib'", "no package //nowhere"),
        edits=(("teachers/BUILD", '"//must",', '"//nowhere:lib",'),),
    ),
    _Broken(
        "dep_on_test",
        "deps",
        ("'//tests:test_core'", "is a py_test"),
        edits=(("tests/must/BUILD", '"//tests:conftest"', '"//tests:test_core"'),),
    ),
    _Broken(
        "bare_label",
        "deps",
        ("'conftest'", "is not one of"),
        edits=(("tests/BUILD", '":conftest",', '"conftest",'),),
    ),
    _Broken(
        "unknown_requirement",
        "deps",
        ("teachers/BUILD:4:", "requirement('pandas')", "not listed in requirements.txt"),
        edits=(("teachers/BUILD", 'requirement("absl_py")', 'requirement("pandas")'),),
    ),
    _Broken(
        "requirement_with_extras",
        "deps",
        ("requirement('apache-beam[gcp]')", "bare distribution"),
        edits=(("tests/BUILD", 'requirement("apache-beam")', 'requirement("apache-beam[gcp]")'),),
    ),
    _Broken(
        "requirements_file_missing",
        "deps",
        ("requirement('numpy')", "requirements.txt does not exist"),
        remove=("requirements.txt",),
    ),
    _Broken(
        "glob",
        "parse",
        ("must/BUILD:10:", "glob() is not allowed"),
        edits=(("must/BUILD", "srcs = [", 'srcs = glob(["*.py"]) + ['),),
    ),
    _Broken(
        "unknown_rule",
        "parse",
        ("teachers/BUILD:4:", "unknown rule or function cc_library()"),
        edits=(("teachers/BUILD", "py_binary(\n", "cc_library(\n"),),
    ),
    _Broken(
        "assignment",
        "parse",
        ("configs/BUILD:1:", "unsupported statement"),
        edits=(("configs/BUILD", "exports_files", 'FILES = ["demo.yaml"]\nexports_files'),),
    ),
    _Broken(
        "non_literal",
        "parse",
        ("tests/must/BUILD:5:", "non-literal value"),
        edits=(("tests/must/BUILD", '["test_world.py"]', '["test_world.py"] + EXTRA'),),
    ),
    _Broken(
        "rule_not_loaded",
        "parse",
        ("teachers/BUILD:4:", "py_binary() is used without load()", RULES_PYTHON_DEFS),
        edits=(("teachers/BUILD", '"py_binary"', '"py_library"'),),
    ),
    _Broken(
        "load_from_elsewhere",
        "parse",
        ("tests/must/BUILD:1:", "is not allowed; BUILD files load only from"),
        edits=(("tests/must/BUILD", "@rules_python//python:defs.bzl", "//tools:defs.bzl"),),
    ),
    _Broken(
        "load_after_rule",
        "parse",
        ("configs/BUILD:", "load() must come before every other statement"),
        add={"configs/BUILD": """\
            exports_files(["demo.yaml"])
            load("@rules_python//python:defs.bzl", "py_library")
            """},
    ),
    _Broken(
        "unknown_attribute",
        "parse",
        ("must/BUILD:8:", "py_library() has no attribute main"),
        edits=(("must/BUILD", 'name = "must",', 'name = "must",\n    main = "core.py",'),),
    ),
    _Broken(
        "bad_size",
        "parse",
        ("tests/BUILD:10:", "size must be one of"),
        edits=(("tests/BUILD", 'size = "small"', 'size = "tiny"'),),
    ),
    _Broken(
        "both_build_files",
        "parse",
        ("has both BUILD.bazel and BUILD",),
        add={"teachers/BUILD.bazel": "\n"},
    ),
    _Broken(
        "private_dep",
        "visibility",
        ("tests/BUILD:10:", "uses //must:must, which is not visible to //tests"),
        edits=(("must/BUILD", 'package(default_visibility = ["//visibility:public"])\n', ""),),
    ),
    _Broken(
        "bad_visibility_form",
        "visibility",
        ("'//tests'", "is not one of"),
        edits=(("configs/BUILD", '"//tests:__subpackages__"', '"//tests"'),),
    ),
    _Broken(
        "cycle",
        "cycles",
        ("dependency cycle: //must:must -> //teachers:train -> //must:must",),
        edits=(
            ("must/BUILD", 'deps = [requirement("numpy")]', 'deps = ["//teachers:train"]'),
            ("teachers/BUILD", "srcs =", 'visibility = ["//visibility:public"],\n    srcs ='),
        ),
    ),
    _Broken(
        "duplicate_name",
        "names",
        (
            "tests/BUILD: target name 'conftest' is declared 2 times",
            "tests/BUILD:4",
            "tests/BUILD:24",
        ),
        edits=(("tests/BUILD", 'name = "run_all"', 'name = "conftest"'),),
    ),
    _Broken(
        "binary_without_main",
        "names",
        ("teachers/BUILD:4: py_binary //teachers:train", "exactly one src named 'train.py'"),
        edits=(("teachers/BUILD", '["train.py"]', '["trainer.py"]'),),
        add={"teachers/trainer.py": ""},
        remove=("teachers/train.py",),
    ),
    _Broken(
        "main_missing",
        "names",
        ("main 'missing.py' is not in srcs", "main file tests/missing.py does not exist"),
        edits=(("tests/BUILD", 'main = "runner.py"', 'main = "missing.py"'),),
    ),
    _Broken(
        "workspace_missing",
        "workspace",
        ("WORKSPACE: missing",),
        remove=("WORKSPACE",),
    ),
    _Broken(
        "workspace_lock_missing",
        "workspace",
        ("requirements_lock '//:requirements_lock.txt'", "requirements_lock.txt does not exist"),
        edits=(("WORKSPACE", "//:requirements.txt", "//:requirements_lock.txt"),),
    ),
    _Broken(
        "workspace_requirements_missing",
        "workspace",
        ("requirements.txt does not exist",),
        remove=("requirements.txt",),
    ),
    _Broken(
        "workspace_without_pip_parse",
        "workspace",
        ('no pip_parse(name = "pypi"',),
        edits=(("WORKSPACE", 'name = "pypi"', 'name = "pip"'),),
    ),
    _Broken(
        "workspace_wrong_python",
        "workspace",
        ('python_version = "3.11"',),
        edits=(("WORKSPACE", 'python_version = "3.11"', 'python_version = "3.10"'),),
    ),
    _Broken(
        "workspace_load_before_declared",
        "workspace",
        ("WORKSPACE:2:", "before any rule declares @rules_python"),
        edits=(
            (
                "WORKSPACE",
                'workspace(name = "fake")\n',
                'workspace(name = "fake")\nload("@rules_python//python:pip.bzl", "pip_parse")\n',
            ),
        ),
    ),
]


@pytest.mark.parametrize("broken", _BROKEN, ids=[b.id for b in _BROKEN])
def test_checker_reports_broken_tree(tmp_path: pathlib.Path, broken: _Broken) -> None:
    root = _make_tree(tmp_path, broken.edits, broken.add, broken.remove)
    report = "\n".join(_all_problems(root)[broken.check])
    for expected in broken.expect:
        assert expected in report, f"{expected!r} missing from {broken.check} report:\n{report}"


def test_parse_label_forms() -> None:
    assert parse_label(":lib", "must/world") == ("must/world", "lib")
    assert parse_label("//must/world:lib", "tests") == ("must/world", "lib")
    assert parse_label("//must/world", "tests") == ("must/world", "world")
    assert parse_label("//:requirements.txt", "tests") == ("", "requirements.txt")
    assert parse_label("//configs:sub/a.yaml", "") == ("configs", "sub/a.yaml")
    for bad in ("lib", "@pypi//numpy:pkg", "//", "//a:", "//a/../b:c", ":a:b", "//a//b:c"):
        with pytest.raises(ValueError):
            parse_label(bad, "must")


def test_normalize_distribution() -> None:
    assert normalize_distribution("Apache_Beam[gcp]>=2.77") == "apache-beam"
    assert normalize_distribution("tf.keras==2.20") == "tf-keras"
    assert normalize_distribution("absl-py") == "absl-py"
    assert normalize_distribution("zope__interface ; python_version>'3'") == "zope-interface"


def test_owning_package() -> None:
    packages = {"", "must", "tests/must"}
    assert owning_package("must/world/a.py", packages) == "must"
    assert owning_package("tests/must/test_a.py", packages) == "tests/must"
    assert owning_package("tests/test_a.py", packages) == ""
    assert owning_package("tests/must", packages, is_dir=True) == "tests/must"
    assert owning_package("a.py", {"must"}) is None
