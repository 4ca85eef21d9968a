"""Helpers for the worker processes of parallel searches and studies."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent() -> None:
    """Start a daemon thread that ends this process when its parent dies (orphaned worker of a killed run)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


__all__ = ["exit_with_parent"]
