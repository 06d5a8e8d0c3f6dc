"""The C module of the Linux monitor; everything else is in pyproject.toml.

Optional: without a compiler the install still succeeds and netwarden uses its Python
code for the same work, only slower.
"""

import sys

from setuptools import Extension, setup

SOURCE = "src/netwarden/platform/linux/"
# The module's parts: those with a header of their own, and those sharing _native.h.
PARTS = ("_btf", "_taskfiles", "_tcptrack", "_flowevents")
PYTHON_PARTS = ("_native", "_batch", "_tracker", "_procscan", "_flowreader")

native = Extension(
    "netwarden.platform.linux._native",
    sources=[f"{SOURCE}{part}.c" for part in PYTHON_PARTS + PARTS],
    depends=[f"{SOURCE}{part}.h" for part in ("_native", *PARTS)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter"],
    optional=True,
)  # fmt: skip
setup(ext_modules=[native] if sys.platform == "linux" else [])
