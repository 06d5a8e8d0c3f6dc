"""The C module of the Linux monitor; everything else is in pyproject.toml.

Optional: without a compiler the install still succeeds and netwarden uses its Python
code for the same work, only slower.
"""

import sys

from setuptools import Extension, setup

native = Extension(
    "netwarden.platform.linux._native",
    sources=["src/netwarden/platform/linux/_native.c", "src/netwarden/platform/linux/_taskfiles.c"],
    depends=["src/netwarden/platform/linux/_taskfiles.h"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter"],
    optional=True,
)  # fmt: skip
setup(ext_modules=[native] if sys.platform == "linux" else [])
