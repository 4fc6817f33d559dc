"""The docs that are generated from code are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_method_tables_in_protocol_md_match_the_declared_methods():
    out = subprocess.run(
        [sys.executable, str(REPO / "docs" / "gen_protocol_methods.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
