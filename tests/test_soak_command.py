"""`specmemo soak` as a user runs it: its own tiny deployment under load, SIGKILLs and hostile
frames at once, for a few seconds; it must end clean (exit 0) and say why in its summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

LONG = os.environ.get("SPECMEMO_LONG") == "1"


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "minutes", [pytest.param(5.0, marks=pytest.mark.skipif(not LONG, reason="long run: SPECMEMO_LONG=1")), 0.3]
)
def test_the_soak_command_ends_clean_and_reports_it(tmp_path, minutes):
    env = {**os.environ, "SPECMEMO_RUN_ROOT": str(tmp_path / "run")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "specmemo.deploy.cli",
            "soak",
            "--minutes",
            str(minutes),
            "--clients",
            "3",
            "--kill-pause",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=560,
    )
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    calls = re.search(r"calls\s+(\d+) \((\d+) ok\), wrong results (\d+), hung (\d+)", text)
    assert calls and int(calls[2]) > 0 and calls[3] == "0" and calls[4] == "0", text
    assert re.search(r"kills\s+\w+\s+\d+ x", text), "no actor was killed during the soak"
    fuzz = re.search(r"fuzz\s+(\d+) frames, (\d+)/(\d+) typed errors expected back, (\d+) untyped", text)
    assert fuzz and int(fuzz[1]) > 0 and fuzz[2] == fuzz[3] and fuzz[4] == "0", text
    assert "leaked blocks: none" in text
    assert re.search(r"lost 0, duplicated 0, wrong 0", text)
    assert "orphans none" in text and "stopped with code 0" in text
    assert not list((tmp_path / "run").glob("*/endpoint")), "the soak deployment left its run files"
