"""The generated test matrices and their Matrix Market round trip."""

import io
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from specmemo.native import matrices


@pytest.mark.parametrize("family", sorted(matrices.FAMILIES))
def test_every_family_is_exactly_skew_symmetric(family):
    a = matrices.generate(family, 500, seed=1)
    assert a.nnz > 0
    assert (a + a.T).count_nonzero() == 0


def test_convection_2d_is_the_central_difference_stencil():
    a = matrices.convection_2d(4, 3, vx=2.0, vy=1.0).toarray()
    # row of grid point (x=1, y=1): neighbours in x at +-1, in y at +-4
    i = 1 * 4 + 1
    assert a[i, i + 1] == 1.0 and a[i, i - 1] == -1.0
    assert a[i, i + 4] == 0.5 and a[i, i - 4] == -0.5
    assert np.count_nonzero(a[i]) == 4


def test_scrambling_permutes_symmetrically_and_is_seeded():
    a = matrices.convection_2d(10, 10)
    s1, s2 = matrices.scramble(a, 3), matrices.scramble(a, 3)
    assert (s1 != s2).nnz == 0 and (s1 != a).nnz > 0
    assert np.allclose(np.sort(np.linalg.eigvals(s1.toarray()).imag), np.sort(np.linalg.eigvals(a.toarray()).imag))


def test_saddle_has_zero_diagonal_blocks():
    a = matrices.saddle(30, 20, 0.2, seed=0).toarray()
    assert not a[:30, :30].any() and not a[30:, 30:].any()
    assert np.array_equal(a[:30, 30:], -a[30:, :30].T)


def test_matrix_market_round_trip_keeps_the_matrix(tmp_path):
    a = matrices.generate("outliers", 300, seed=2)
    path = tmp_path / "a.mtx"
    matrices.write_mtx(path, a)
    assert "skew-symmetric" in path.read_text().splitlines()[0]
    b = matrices.read_mtx(path)
    assert isinstance(b, sp.csr_array) and (a != b).nnz == 0


def test_matrix_market_bytes_are_read_from_memory(tmp_path):
    a = matrices.generate("saddle", 60, seed=3)
    path = tmp_path / "s.mtx"
    matrices.write_mtx(path, a)
    assert (matrices.read_mtx(io.BytesIO(path.read_bytes())) != a).nnz == 0


def test_cli_writes_a_matrix_market_file(tmp_path):
    out = tmp_path / "c.mtx"
    proc = subprocess.run(
        [sys.executable, "-m", "specmemo.native.matrices", "convection3d", "125", "--seed", "4", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "n=125" in proc.stdout
    assert (matrices.read_mtx(out) != matrices.generate("convection3d", 125, seed=4)).nnz == 0


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        matrices.generate("nope", 10)
