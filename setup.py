"""The C module of the Linux monitor; everything else is in pyproject.toml.

Optional: without a compiler the install still succeeds and netwarden uses its Python
code for the same work, only slower.
"""

import sys

from setuptools import Extension, setup

SOURCE = "src/netwarden/platform/linux/"
PARTS = ("_btf", "_taskfiles", "_tcptrack")  # each with a header

native = Extension(
    "netwarden.platform.linux._native",
    sources=[SOURCE + "_native.c"] + [f"{SOURCE}{part}.c" for part in PARTS],
    depends=[f"{SOURCE}{part}.h" for part in PARTS],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter"],
    optional=True,
)  # fmt: skip
setup(ext_modules=[native] if sys.platform == "linux" else [])
