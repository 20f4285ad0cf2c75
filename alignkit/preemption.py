"""Stop cleanly when a scheduler asks: finish the optimizer step, checkpoint, then exit.

A watched signal is only noted; the training loop looks at the note between optimizer steps,
so the step in flight completes, a checkpoint is written, and the process exits with a status
a requeue understands. Re-running the same command resumes from that checkpoint.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

#: 128 + SIGTERM: the status a shell reports for a process ended by SIGTERM, which schedulers
#: already read as "stopped from outside, not failed".
DEFAULT_EXIT_CODE = 143


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(
        self, signal_name: str, step: int, exit_code: int, previous_handler: Any = None
    ) -> None:
        super().__init__(
            f"stopped by {signal_name} after step {step} and saved a checkpoint; "
            f"re-run the same command to resume (exit status {exit_code})"
        )
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.previous_handler = previous_handler

    def hand_on(self) -> None:
        """Pass the signal to whoever handled it before alignkit did (e.g. submitit, whose
        handler requeues the job and exits); nothing if that was Python's default."""
        if callable(self.previous_handler):
            self.previous_handler(signal.Signals[self.signal_name].value, None)


def parse_signals(names: Sequence[str]) -> list[signal.Signals]:
    """``["SIGTERM", "USR1"]`` -> signal numbers; a ValueError naming an unknown one."""
    parsed = []
    for name in names:
        full = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        if full not in signal.Signals.__members__ or full in ("SIGKILL", "SIGSTOP"):
            raise ValueError(
                f"trainer.preempt_signals has {name!r}, not a signal that can be caught; "
                "use names such as SIGTERM, SIGUSR1, SIGUSR2"
            )
        parsed.append(signal.Signals[full])
    return parsed


class SignalWatch:
    """While active, notes the first watched signal instead of dying of it."""

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.signals = list(signals)
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _note(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signal.Signals(number)
            log.warning("%s received: stopping after this optimizer step", self.received.name)

    @property
    def previous_handler(self) -> Callable | int | None:
        """The handler the received signal had before this watch took it over."""
        return self._previous.get(self.received) if self.received is not None else None

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: preemption signals are not watched")
            return self
        for number in self.signals:
            self._previous[number] = signal.signal(number, self._note)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
