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


def test_the_worked_ping_example_decodes_to_the_declared_reply():
    import re

    import msgpack

    from specmemo.protocol.kernel_messages import PingReply
    from specmemo.protocol.schema import from_wire

    text = (REPO / "docs" / "protocol.md").read_text()
    section = text[text.index("## 13. Worked example") :]
    row = next(line for line in section.splitlines() if line.startswith("| 4 body | `8"))
    body = msgpack.unpackb(bytes.fromhex(re.search(r"`([0-9a-f ]+)`", row).group(1).replace(" ", "")))
    reply = from_wire(PingReply, body)
    assert set(body) == {f for f in PingReply.__dataclass_fields__}  # every field, nothing else
    assert reply.pong is True and reply.pid == 14319
