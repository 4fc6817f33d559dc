"""The cffi build's OpenMP check and the C kernels' own argument checks."""

import pytest

from specmemo.native import NativeError, _build, spmv
from specmemo.native._pars3 import ffi, lib


def test_build_refuses_a_compiler_without_openmp(monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every compile
    with pytest.raises(RuntimeError, match="needs OpenMP.*-fopenmp"):
        _build.require_openmp()


def test_build_names_a_missing_compiler(monkeypatch):
    monkeypatch.setenv("CC", "no-such-cc-here")
    with pytest.raises(RuntimeError, match="needs a C compiler; 'no-such-cc-here' was not found"):
        _build.require_openmp()


def test_build_accepts_this_machines_compiler():
    _build.require_openmp()


def test_c_kernels_refuse_null_pointers_and_bad_sizes_with_a_status():
    x = ffi.new("double[4]")
    assert lib.pars3_triad(-1, 1.0, x, x, x, 1) == lib.PARS3_EINVAL
    assert lib.pars3_triad(4, 1.0, x, x, x, 0) == lib.PARS3_EINVAL
    assert lib.pars3_triad(4, 1.0, ffi.NULL, x, x, 1) == lib.PARS3_EINVAL
    assert lib.pars3_half_spmv(ffi.NULL, x, x) == lib.PARS3_EINVAL
    half = ffi.new("pars3_half *")
    rowptr = ffi.new("int64_t[2]")
    half.n, half.rowptr, half.sign = 1, rowptr, 0
    assert lib.pars3_half_spmv(half, x, x) == lib.PARS3_EINVAL  # sign must be +-1
    half.sign = -1
    assert lib.pars3_half_spmv(half, x, x) == lib.PARS3_OK
    band = ffi.new("pars3_band *")
    assert lib.pars3_band_spmv(half, band, 0.0, ffi.NULL, 1.0, x, x, ffi.NULL, 1) == lib.PARS3_EINVAL  # no blocks
    assert lib.pars3_mrs_update(4, 0.0, 0.0, 0.0, 1.0, 1.0, x, x, x, x, 1) == lib.PARS3_EINVAL  # rho = 0


def test_a_failure_status_becomes_kernel_error():
    with pytest.raises(NativeError, match="pars3_triad returned status -1"):
        spmv._status(lib.PARS3_EINVAL, "pars3_triad")
    spmv._status(lib.PARS3_OK, "pars3_triad")
