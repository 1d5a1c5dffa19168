"""No silent hangs: every collective waits at most `distributed.timeout_s`, and a rank that gives up
says which operation, at which step, before it exits non-zero.

Three pieces:

- The process group's timeout (`sam3.distributed.env.init_distributed(timeout_s=...)`). gloo applies it
  to every collective, DDP's gradient all-reduce included, and to `Work.wait()` of async gathers; NCCL's
  watchdog applies it to every kernel and, with `TORCH_NCCL_ASYNC_ERROR_HANDLING` (on by default),
  tears the process down. A peer that *died* is usually noticed at once (gloo: "connection closed by
  peer"); a peer that *stopped* (SIGSTOP, a deadlock, a wedged device) only through the timeout.
- `operation(name)`: the trainer names what every rank is doing ("all-reduce of the loss counts",
  "forward/backward (frame gathers, DDP all-reduce of gradients)", "checkpoint > barrier after the
  write", ...), and `set_step` says at which step. A backend error raised inside becomes a
  `CollectiveError` whose message names the operation, the step, the time waited and the timeout, and
  is logged as an error line at once (before any clean-up that might itself block); any other error
  is logged with the operation and step and re-raised unchanged.
- A watchdog thread: a *watched* operation (a pure collective, no compute of its own) still open
  `timeout_s + grace_s(timeout_s) / 2` after it started logs the same line and ends the process with
  `os._exit(EXIT_CODE_HUNG)`. It is the backstop for any path where the backend does not honour the
  timeout. Phases that include this rank's own compute (a forward/backward, a validation) are named
  but not watched: their length is the model's business; the collectives inside them still time out.

The bound: a rank whose peer stops responding exits non-zero within `timeout_s + grace_s(timeout_s)`
of the moment it entered the collective the peer never joined (`grace_s` = max(5 s, 10 % of the
timeout): 60 s at the default of 600 s, 5 s at a test's 4 s). The backend raises at `timeout_s`; the
error path takes a fraction of a second (`sam3.train.entry.run` runs no clean-up collective after a
failure, `train.py` logs the traceback and calls `os._exit(1)`); the watchdog fires at
`timeout_s + grace_s / 2` if the backend does not. Measured with gloo and `timeout_s=4`: the
survivor exits 4.0-4.1 s after its peer is stopped (`tests/distributed/test_hang.py`). Under torchrun
the job ends when the agent has reaped the stopped rank as well: it sends SIGTERM, which a stopped
process never handles, and SIGKILLs it 30 s later (torchrun's fixed shutdown grace), so the whole job
exits within `timeout_s + grace_s + 30 s` (measured: 35.4-35.9 s at `timeout_s=4`). A rank that
raises exits non-zero at once (no barrier on the error path); its peers notice the closed connection
at once (gloo) or time out, and torchrun stops them (measured: the job ends 0.6-1.5 s after the
exception).

Default timeout: 600 s, PyTorch's NCCL default. It must exceed the longest time one rank may work
while the others wait in a collective: rank 0 writing a checkpoint (peers wait in the barrier), rank
0 computing validation metrics (peers wait in the next step's first collective), one frame group
finishing its validation videos after another, or the first step's `torch.compile`. Raise it for very
large validation sets or slow checkpoint storage; lower it to notice hangs sooner.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
EXIT_CODE_HUNG = 3  # the watchdog's exit status: a watched collective outlived timeout + grace
TORCHRUN_KILL_GRACE_S = 30.0  # torchrun's SIGTERM -> SIGKILL wait when it stops the other workers
_POLL_S = 0.5
_NAMED = "_sam3_operation_logged"  # set on an exception once an operation has logged it


def grace_s(timeout_s: float) -> float:
    """The margin of the exit bound past `timeout_s`: max(5 s, 10 %) (the watchdog fires at half of it)."""
    return max(5.0, 0.1 * timeout_s)


def exit_bound_s(timeout_s: float) -> float:
    """Upper bound on the seconds from entering a collective whose peer stopped to this rank's exit."""
    return timeout_s + grace_s(timeout_s)


class CollectiveError(RuntimeError):
    """A collective failed or timed out; the message names the operation, the step and the timeout."""


@dataclass
class _Open:
    name: str
    step: int | None
    started: float
    watched: bool


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.step: int | None = None
        self.stack: list[_Open] = []
        self.watchdog: threading.Thread | None = None


_state = _State()


def configure(timeout_s: float, *, start_watchdog: bool) -> None:
    """Sets the timeout the messages and the watchdog use; starts the watchdog thread once if asked
    (only with a process group: a lone process has nobody to wait for)."""
    if not timeout_s > 0:
        raise ValueError(f"distributed.timeout_s={timeout_s}: expected a positive number of seconds")
    with _state.lock:
        _state.timeout_s = float(timeout_s)
        if start_watchdog and _state.watchdog is None:
            _state.watchdog = threading.Thread(target=_watch, name="sam3-collective-watchdog", daemon=True)
            _state.watchdog.start()


def timeout_s() -> float:
    """The configured collective timeout in seconds."""
    return _state.timeout_s


def set_step(step: int | None) -> None:
    """The step the following operations belong to (None: outside training steps)."""
    _state.step = step


def current_operation() -> str | None:
    """The innermost open operation with its enclosing ones, as "OUTER > INNER at step S", or None."""
    with _state.lock:
        return _describe(_state.stack[-1]) if _state.stack else None


@contextmanager
def operation(name: str, *, watched: bool = True) -> Iterator[None]:
    """Names what every rank does inside the block, for timeout messages and the watchdog.

    Args:
        name: what the block does, e.g. "all-reduce of the loss counts"; nested inside another
            operation it is reported as "OUTER > NAME".
        watched: the block is a collective with no compute of its own, so the watchdog may end the
            process when it outlives timeout + grace; False for phases that include compute.

    Raises:
        CollectiveError: from a backend error inside the block (a timeout or a lost peer), naming
            this operation and the step. Any other exception is logged once with the operation and
            the step, and re-raised unchanged.
    """
    with _state.lock:
        outer = _state.stack[-1].name + " > " if _state.stack else ""
        entry = _Open(name=outer + name, step=_state.step, started=time.monotonic(), watched=watched)
        _state.stack.append(entry)
    try:
        yield
    except CollectiveError:
        raise  # already named by an inner operation
    except Exception as error:
        if getattr(error, _NAMED, False):
            raise  # logged by an inner operation
        waited = time.monotonic() - entry.started
        failed = f"rank {_rank()}: {_describe(entry)} failed after {waited:.1f} s"
        if not (isinstance(error, RuntimeError) and _is_backend_error(error)):
            # most likely not communication (a bug, bad data): logged with where it happened, unchanged
            logger.error("%s: %s: %s", failed, type(error).__name__, _first_line(error))
            _flush_logs()
            setattr(error, _NAMED, True)
            raise
        message = (
            f"{failed} (distributed.timeout_s={_state.timeout_s:g}): another rank stopped responding or "
            "exited; see its log. If a rank legitimately works alone this long (checkpoint writes, "
            f"validation), raise distributed.timeout_s. Backend error: {_first_line(error)}"
        )
        logger.error(message)
        _flush_logs()
        raise CollectiveError(message) from error
    finally:
        with _state.lock:
            _state.stack.remove(entry)


def _describe(entry: _Open) -> str:
    return entry.name if entry.step is None else f"{entry.name} at step {entry.step}"


def _is_backend_error(error: RuntimeError) -> bool:
    """Errors a collective raises when a peer is gone or late (by type where torch has one, else text)."""
    try:
        from torch.distributed import DistError

        if isinstance(error, DistError):
            return True
    except ImportError:  # pragma: no cover - older torch
        pass
    text = str(error).lower()
    # gloo raises plain RuntimeErrors, e.g. "Timed out waiting 4000ms for recv operation to complete",
    # "Connection closed by peer", "Application timeout caused pair closure" (in DDP's backward)
    markers = ("gloo", "nccl", "timed out", "timeout", "closed by peer", "connection reset", "pair closure")
    return any(marker in text for marker in markers)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _rank() -> int:
    from sam3.distributed.env import get_rank

    return get_rank()


def _watch() -> None:
    """Ends the process when the oldest open watched operation outlives timeout + grace / 2."""
    while True:
        time.sleep(_POLL_S)
        with _state.lock:
            watched = [entry for entry in _state.stack if entry.watched]
            limit = _state.timeout_s + grace_s(_state.timeout_s) / 2
            late = watched[0] if watched and time.monotonic() - watched[0].started > limit else None
            innermost = _state.stack[-1] if _state.stack else None
        if late is None:
            continue
        logger.critical(
            "rank %d: %s did not complete within distributed.timeout_s=%g s + %g s "
            "(now in: %s); another rank stopped responding. Exiting with status %d.",
            _rank(),
            _describe(late),
            _state.timeout_s,
            grace_s(_state.timeout_s) / 2,
            _describe(innermost) if innermost else "none",
            EXIT_CODE_HUNG,
        )
        _flush_logs()
        os._exit(EXIT_CODE_HUNG)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - flushing is best effort on the way out
            pass
