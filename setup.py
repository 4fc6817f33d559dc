# The cffi extension cannot be declared in pyproject.toml alone: setuptools reads
# `cffi_modules` only from setup(). Everything else lives in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["native/_build.py:ffi", "native/_build.py:decode_ffi"])
