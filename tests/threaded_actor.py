"""A draft actor whose preload starts a thread: a zygote that imported it must not fork."""
from __future__ import annotations

import threading
import time
from typing import Any

from specmemo.actors.draft import DraftActor


class ThreadedDraft(DraftActor):
    @staticmethod
    def preload(config: dict[str, Any]) -> None:
        DraftActor.preload(config)
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
