"""What the daemon passes to Ray: a private cluster ("local") listens on 127.0.0.1 by the
daemon's own arguments, never by an environment variable; and Ray's signal handlers never
replace the daemon's."""

from __future__ import annotations

import signal
import sys
import types
from typing import Any

import pytest

from insightron_watchd.config.settings import Settings
from insightron_watchd.executors.ray_actors import RayExecutor, init_args


def test_local_binds_loopback_by_what_is_passed_to_ray_init() -> None:
    args = init_args("local", "insightron")
    assert args["address"] is None
    assert args["_node_ip_address"] == "127.0.0.1"
    assert args["include_dashboard"] is False and args["dashboard_host"] == "127.0.0.1"
    joined = init_args("ray://10.0.0.5:10001", "insightron")
    assert joined["address"] == "ray://10.0.0.5:10001" and "_node_ip_address" not in joined


def test_ray_init_may_not_keep_the_daemons_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in ``ray`` whose init installs exit-at-once handlers, as Ray's driver does."""
    seen: dict[str, Any] = {}

    def fake_init(**kw: Any) -> None:
        seen.update(kw)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))
        signal.signal(signal.SIGINT, lambda *_: sys.exit(2))
        raise RuntimeError("stop here")  # (the rest of start needs a cluster)

    fake = types.SimpleNamespace(is_initialized=lambda: False, init=fake_init)
    monkeypatch.setitem(sys.modules, "ray", fake)  # type: ignore[arg-type]

    def mine(*_: Any) -> None:
        return None

    old_term = signal.signal(signal.SIGTERM, mine)
    old_int = signal.signal(signal.SIGINT, mine)
    try:
        settings = Settings.model_construct()
        settings = settings.model_copy(
            update={
                "executor": settings.executor.model_copy(update={"kind": "ray", "address": "local"})
            }
        )
        ex = RayExecutor(settings)
        with pytest.raises(Exception, match="stop here"):
            ex.start()
        assert seen["_node_ip_address"] == "127.0.0.1"
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
