"""The three (plus one) callbacks through which the core talks to the outside world.

Every long-running core function takes ``progress``, ``should_stop``, ``log`` and
``metric`` keyword arguments; ``Callbacks`` bundles them with safe defaults so inner
functions can pass one object around.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from .errors import Cancelled

ProgressFn = Callable[[float], None]
StopFn = Callable[[], bool]
LogFn = Callable[[str], None]
MetricFn = Callable[[Dict[str, Any]], None]


def _noop(*_args: Any) -> None:
    return None


def _never() -> bool:
    return False


@dataclass
class Callbacks:
    """Callbacks of one core call.

    Attributes:
        progress: receives the overall fraction done, 0..1 (monotone per call).
        should_stop: polled at least once per batch / tile; True means stop cleanly.
        log: one human-readable line at a time.
        metric: a dict of numbers (e.g. ``{"model": ..., "epoch": 3, "val_loss": ...}``).
    """

    progress: ProgressFn = field(default=_noop)
    should_stop: StopFn = field(default=_never)
    log: LogFn = field(default=_noop)
    metric: MetricFn = field(default=_noop)

    @classmethod
    def of(
        cls,
        progress: Optional[ProgressFn] = None,
        should_stop: Optional[StopFn] = None,
        log: Optional[LogFn] = None,
        metric: Optional[MetricFn] = None,
    ) -> "Callbacks":
        """Builds callbacks, replacing each missing one with a no-op."""
        return cls(progress or _noop, should_stop or _never, log or _noop, metric or _noop)

    def check_stop(self, what: str = "") -> None:
        """Raises ``Cancelled`` when the caller asked to stop."""
        if self.should_stop():
            raise Cancelled(f"cancelled{': ' + what if what else ''}")
