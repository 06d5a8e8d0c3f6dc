"""The C module of the Linux monitor; everything else is in pyproject.toml.

Optional: without a compiler the install still succeeds and netwarden uses its Python
code for the same work, only slower.
"""

import sys

from setuptools import Extension, setup

native = Extension(
    "netwarden.platform.linux._native",
    sources=[f"src/netwarden/platform/linux/{name}.c" for name in ("_native", "_btf", "_taskfiles", "_tcptrack")],
    depends=[f"src/netwarden/platform/linux/{name}.h" for name in ("_btf", "_taskfiles", "_tcptrack")],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter"],
    optional=True,
)  # fmt: skip
setup(ext_modules=[native] if sys.platform == "linux" else [])
