"""The linter, the formatter and the type checker, configured in pyproject.toml, are clean.

Static tools cannot see the installed names of the four top-level folders (pyproject maps
`specmemo.actors` to actors/, and so on), so the type check runs over a link tree that gives
them those names: `build/typecheck/specmemo/<folder>` -> `<folder>`. Every import between the
packages then resolves (pyproject makes an unresolved `specmemo.*` import an error), and the
last test shows that it would be caught.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "protocol", "native", "deploy")
LINTED = [*PACKAGES, "bench", "tests", "docs"]


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed (it is in the test extras: bash deploy/run.sh setup)")
        return found
    return str(path)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def link_tree() -> Path:
    """build/typecheck/specmemo/<folder> -> <folder>, made once per checkout."""
    base = ROOT / "build" / "typecheck"
    pkg = base / "specmemo"
    pkg.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link = pkg / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(ROOT / name, target_is_directory=True)
    return base


def mypy(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(link_tree())}
    return run([tool("mypy"), "--cache-dir", str(ROOT / "build" / "mypy-cache"), *args], env=env)


def test_ruff_lint_is_clean():
    out = run([tool("ruff"), "check", "--output-format", "concise", *LINTED])
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    out = run([tool("ruff"), "format", "--check", *LINTED])
    assert out.returncode == 0, "run `.venv/bin/ruff format .`:\n" + out.stdout + out.stderr


def test_mypy_is_clean_over_the_installed_names():
    out = mypy(*[arg for name in PACKAGES for arg in ("-p", f"specmemo.{name}")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout


def test_mypy_catches_an_import_between_packages_that_does_not_resolve():
    out = mypy("-c", "from specmemo.protocol.methods import METHODS\nfrom specmemo.protocol.nosuch import X\n")
    assert out.returncode == 1
    assert "specmemo.protocol.nosuch" in out.stdout and "import-not-found" in out.stdout
    assert "methods" not in out.stdout  # the real module resolved


#: What each package may import of ours (docs/decisions.md, "Layout"): the arrows point one way.
ALLOWED = {
    "protocol": {"protocol"},
    "native": {"native"},
    "actors": {"actors", "protocol", "native"},
    "deploy": {"deploy", "actors", "protocol", "native"},
}


def our_imports(path: Path) -> set[str]:
    """The top-level packages of ours that a module imports (absolute `specmemo.<pkg>` imports;
    relative ones stay inside their package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "specmemo"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "specmemo" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_between_packages_point_one_way(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(our_imports(path) - ALLOWED[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_the_import_check_sees_a_wrong_arrow(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from specmemo.deploy.local import DEFAULT_CONFIG\nimport specmemo.actors.kinds\n")
    assert our_imports(module) - ALLOWED["protocol"] == {"deploy", "actors"}


def test_no_module_of_the_actors_or_the_protocol_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for folder in ("actors", "protocol")
        for path in (ROOT / folder).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long, f"split these by concept: {long}"


@pytest.mark.parametrize("package", ["actors", "protocol", "native", "deploy"])
def test_a_folder_imported_by_its_bare_name_is_refused(package):
    # from the repository root `import actors` would load a second copy of specmemo.actors, whose
    # classes fail the first copy's isinstance checks (a 4-bit draft then runs its slow path)
    out = subprocess.run(
        [sys.executable, "-c", f"import {package}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and f"import specmemo.{package}, not {package}" in out.stderr
