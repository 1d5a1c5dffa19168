"""`train.py` with a fault: rank `FAULT_RANK` raises at the start of step `FAULT_STEP` (environment
variables), after writing the wall-clock time of the fault to `FAULT_TIME_FILE`; `test_hang.py` runs
this script under torchrun in place of `train.py`."""

import os
import runpy
import sys
import time
from pathlib import Path

import sam3.train.trainer as trainer_module

REPO_ROOT = Path(__file__).resolve().parents[2]
_real_forward_backward = trainer_module.forward_backward


def _forward_backward(model, criterion, micro_batches, step, *args, **kwargs):
    if int(os.environ["RANK"]) == int(os.environ["FAULT_RANK"]) and step == int(os.environ["FAULT_STEP"]):
        Path(os.environ["FAULT_TIME_FILE"]).write_text(repr(time.time()))
        raise RuntimeError(f"injected fault on rank {os.environ['RANK']} at step {step}")
    return _real_forward_backward(model, criterion, micro_batches, step, *args, **kwargs)


trainer_module.forward_backward = _forward_backward
sys.argv[0] = str(REPO_ROOT / "train.py")
runpy.run_path(str(REPO_ROOT / "train.py"), run_name="__main__")
