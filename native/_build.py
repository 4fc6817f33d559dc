"""cffi build of the pars3 kernels (out-of-line API mode), run by `pip install` through setup.py.

The cdef is read from pars3.h. OpenMP is required: the build compiles a tiny OpenMP program
first and stops with a message saying what is missing if that fails.
"""

import os
import re
import shutil
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.relpath(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(
    os.path.join(HERE, name) for name in os.listdir(HERE) if name.endswith(".c") and not name.startswith("_")
)
COMPILE_ARGS = ["-O3", "-std=c11", "-fopenmp"]
LINK_ARGS = ["-fopenmp"]

HEADER = os.path.join(HERE, "pars3.h")


def cdef_from_header(path: str = HEADER) -> str:
    """The cdef is pars3.h itself, read the way cffi's parser wants it: no comments, no include
    guard or #include, and each PARS3_* constant as `#define NAME ...` (its value comes from the
    compiled header). One declaration of every struct and function, in the header."""
    with open(path) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    lines = []
    for line in text.splitlines():
        define = re.match(r"\s*#define\s+(PARS3_\w+)\s+\S", line)
        if define:
            lines.append(f"#define {define.group(1)} ...")
        elif not line.lstrip().startswith("#"):
            lines.append(line)
    return "\n".join(lines)


OPENMP_PROBE = """
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
n += 1;
return n == omp_get_max_threads() ? 0 : 1; }
"""


def require_openmp() -> None:
    """Compile, link and run a tiny OpenMP program; raise with a clear message if it fails."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        raise RuntimeError(f"specmemo.native needs a C compiler; {cc[0]!r} was not found (set CC)")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        exe = os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        proc = subprocess.run(cc + ["-fopenmp", src, "-o", exe], capture_output=True, text=True)
        if proc.returncode != 0 or subprocess.run([exe]).returncode != 0:
            raise RuntimeError(
                "specmemo.native needs OpenMP: compiling a test program with "
                f"`{' '.join(cc)} -fopenmp` failed. Install a compiler with OpenMP "
                "(gcc with libgomp, or clang with libomp) or set CC to one.\n" + proc.stderr
            )


ffi = FFI()
ffi.cdef(cdef_from_header())
ffi.set_source(
    "specmemo.native._pars3",
    '#include "pars3.h"',
    sources=SOURCES,
    include_dirs=[HERE],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS,
)

if __name__ in ("__main__", "__cffi__"):
    require_openmp()

if __name__ == "__main__":
    ffi.compile(verbose=True)
