"""cffi builds of the native libraries (out-of-line API mode), run by `pip install` through setup.py:
`_pars3` (the SpMV kernels, every .c here but the decoding ones) and `_decode` (the decoding
engine's kernels: 4-bit and 8-bit linear layers and their packers, q4.c, q4_pack.c, q8.c and
q8_pack.c, row-wise attention, rows_attention.c, and the draft's decoder step, decode_step.c).

Each cdef is read from its headers (pars3.h; q4.h, q8.h, rows_attention.h, decode_step.h). OpenMP is required:
the build compiles a tiny OpenMP program first and stops with a message saying what is missing
if that fails.
"""

import os
import re
import shutil
import subprocess
import sysconfig
import tempfile

from cffi import FFI

HERE = os.path.relpath(os.path.dirname(os.path.abspath(__file__)))
DECODE_NAMES = ("q4.c", "q4_pack.c", "q8.c", "q8_pack.c", "rows_attention.c", "decode_step.c")
DECODE_SOURCES = [os.path.join(HERE, name) for name in DECODE_NAMES]
SOURCES = sorted(
    os.path.join(HERE, name)
    for name in os.listdir(HERE)
    if name.endswith(".c") and not name.startswith("_") and os.path.join(HERE, name) not in DECODE_SOURCES
)
COMPILE_ARGS = ["-O3", "-std=c11", "-fopenmp"]
LINK_ARGS = ["-fopenmp"]

HEADER = os.path.join(HERE, "pars3.h")


def cdef_from_header(path: str = HEADER, prefix: str = "PARS3_") -> str:
    """The cdef is the header itself, read the way cffi's parser wants it: no comments, no include
    guard or #include, and each <prefix>* constant as `#define NAME ...` (its value comes from the
    compiled header). One declaration of every struct and function, in the header."""
    with open(path) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    lines = []
    for line in text.splitlines():
        define = re.match(rf"\s*#define\s+({prefix}\w+)\s+\S", line)
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

decode_ffi = FFI()
decode_ffi.cdef(cdef_from_header(os.path.join(HERE, "q4.h"), "Q4_"))
decode_ffi.cdef(cdef_from_header(os.path.join(HERE, "q8.h"), "Q8_"))
decode_ffi.cdef(cdef_from_header(os.path.join(HERE, "rows_attention.h"), "ROWS_ATTENTION_"))
decode_ffi.cdef(cdef_from_header(os.path.join(HERE, "decode_step.h"), "DECODE_STEP_"))
decode_ffi.set_source(
    "specmemo.native._decode",
    '#include "q4.h"\n#include "q8.h"\n#include "rows_attention.h"\n#include "decode_step.h"',
    sources=DECODE_SOURCES,
    include_dirs=[HERE],
    extra_compile_args=COMPILE_ARGS,
    extra_link_args=LINK_ARGS + ["-lm"],
)

if __name__ in ("__main__", "__cffi__"):
    require_openmp()

if __name__ == "__main__":
    ffi.compile(verbose=True)
    decode_ffi.compile(verbose=True)
