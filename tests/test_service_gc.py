"""Start-up moves what it loaded out of the cyclic collector's reach (``gc.freeze``), so a full
collection does not walk the store's long-lived objects on the event loop; stopping gives them
back (``gc.unfreeze``), so in-process apps leave nothing frozen behind."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.test_api import client_for


def test_start_up_freezes_and_stop_unfreezes(tmp_path: Path) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with client_for(tmp_path) as client:
        assert client.post("/v1/collections", json={"name": "c", "dim": 4}).status_code == 201
        assert gc.get_freeze_count() > 0  # the app, the store and everything loaded before ready
    assert gc.get_freeze_count() == 0
