"""Packaging shim for Beam runners that take `--setup_file` (Dataflow).

Everything about the package is in `pyproject.toml`; Dataflow workers install
the project from the sdist this builds, so `beam_pipelines`, `must` and
`teachers` import there as they do locally. The pinned stack comes from
`requirements.txt`, given to Dataflow with `--requirements_file` or baked into
a custom worker container.
"""
import setuptools

setuptools.setup()
