"""Stop signals outside SLURM: SIGTERM or SIGUSR1 -> save at the next step boundary, exit `EXIT_CHECKPOINTED`.

Every rank installs the handler (torchrun forwards the signal it receives to all its workers; `kill`,
a container runtime or a scheduler other than SLURM may signal the ranks directly). The handler only
sets a flag (`Trainer.request_checkpoint`); the trainer's any-rank vote at the top of each step makes
every rank save at the same step, even where only some ranks got the signal. SLURM jobs submitted
through `sam3.launch.slurm` route their own preemption signal and requeue instead.
"""

from __future__ import annotations

import logging
import signal
import types
from typing import Any

from sam3.train.trainer import Trainer

logger = logging.getLogger(__name__)

# Exit status of a run that stopped on a signal after saving its checkpoint (sysexits' EX_TEMPFAIL:
# "try again later"); starting the same command again resumes from that checkpoint.
EXIT_CHECKPOINTED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopOnSignal:
    """While active (a context manager), routes `STOP_SIGNALS` to `Trainer.request_checkpoint`.

    A signal that arrives before the trainer exists (while the model and data are being built) is
    remembered and passed on by `attach`, the `on_trainer` hook of `sam3.train.entry.run`.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._trainer: Trainer | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def attach(self, trainer: Trainer) -> None:
        self._trainer = trainer
        if self.received is not None:
            trainer.request_checkpoint()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        self.received = signal.Signals(signum)
        logger.warning("received %s: saving a checkpoint at the next step boundary, then stopping", self.received.name)
        if self._trainer is not None:
            self._trainer.request_checkpoint()
