"""The C modules: the Linux monitor's, and DLP's candidates; everything else is in
pyproject.toml.

Optional: without a compiler the install still succeeds and netwarden uses its Python
code for the same work, only slower.
"""

import sys

from setuptools import Extension, setup

SOURCE = "src/netwarden/platform/linux/"
# The module's parts: those with a header of their own, and those sharing _native.h.
PARTS = ("_btf", "_taskfiles", "_tcptrack", "_flowevents")
PYTHON_PARTS = (
    "_native",
    "_batch",
    "_tracker",
    "_procscan",
    "_flowreader",
    "_execrecords",
    "_othersocks",
    "_connectqueue",
)

native = Extension(
    "netwarden.platform.linux._native",
    sources=[f"{SOURCE}{part}.c" for part in PYTHON_PARTS + PARTS],
    depends=[f"{SOURCE}{part}.h" for part in ("_native", "_bpfprog", *PARTS)],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                        "-Wno-unused-parameter"],
    optional=True,
)  # fmt: skip
# Where the built-in DLP patterns can match, in one pass (netwarden/inspect/dlp.py).
dlpscan = Extension(
    "netwarden.inspect._dlpscan",
    sources=["src/netwarden/inspect/_dlpscan.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"] if sys.platform != "win32" else [],
    optional=True,
)
setup(ext_modules=[native, dlpscan] if sys.platform == "linux" else [dlpscan])
