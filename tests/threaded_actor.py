"""A draft actor whose preload starts a thread: a zygote that imported it must not fork."""

from __future__ import annotations

import threading
import time

from specmemo.actors.draft import DraftActor


class ThreadedDraft(DraftActor):
    @staticmethod
    def preload() -> None:
        DraftActor.preload()
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
