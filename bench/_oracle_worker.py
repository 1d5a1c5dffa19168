"""Both ends of a benchmark's oracle worker: a script that runs Meta's `sam3` package in the oracle
interpreter, answering one JSON line on stdout for each JSON request line on stdin.

- Worker side (`serve`), in the oracle interpreter: the `bench/_meta_*.py` scripts import this file as
  `_oracle_worker` (their folder is their `sys.path[0]`); it imports only the standard library at
  module level. The first line a worker writes is {"ready", "sam3_version", "torch_version"}, or
  {"error"} when the oracle package or the shared tools are missing; a request that fails is answered
  with {"error", "traceback"}.
- Client side (`start_worker`, `OracleWorker`), in our interpreter: the benches import it as
  `bench._oracle_worker` (run with `PYTHONPATH=.`). The worker runs in a temporary folder outside the
  checkout, so its `import sam3` is Meta's package; the folder also carries files both sides exchange.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ worker side
def serve(parser: argparse.ArgumentParser, setup: Callable[[Any, argparse.Namespace], Callable[[dict], dict]]) -> None:
    """Parses the worker's arguments (`--shared-tools`, `--threads`, `--seed` added here), loads the
    shared tools' `official_reference.py` and Meta's package, then answers requests with the handler
    `setup(official_reference_module, args)` returns. Meta's own prints go to stderr."""
    parser.add_argument("--shared-tools", type=Path, required=True, help="folder holding official_reference.py")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    replies, sys.stdout = sys.stdout, sys.stderr

    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        import torch

        ref = _load_official_reference(args.shared_tools)
        import sam3

        if Path(sam3.__file__).resolve().parents[1] == REPO:
            raise SystemExit(f"imported our own sam3 ({sam3.__file__}), not Meta's: run from outside the checkout")
        version = getattr(sam3, "__version__", "?")
    except (ImportError, SystemExit) as error:
        reply({"error": f"{type(error).__name__}: {error}"})
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    handle = setup(ref, args)
    reply({"ready": True, "sam3_version": version, "torch_version": torch.__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply(handle(json.loads(line)))
        except Exception as error:  # noqa: BLE001 - reported to the parent, which decides
            reply({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})


def _load_official_reference(tools: Path):
    """`official_reference.py` of the shared tools as a module; SystemExit with the reason when absent."""
    script = tools / "official_reference.py"
    if not script.is_file():
        raise SystemExit(f"shared tools not found: {script} does not exist")
    spec = importlib.util.spec_from_file_location("official_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ client side
class OracleWorker:
    """A running worker script. Attributes: `info` (its ready line), `workdir` (its current folder).

    Raises RuntimeError when the worker cannot start (its error line says why).
    """

    def __init__(self, python: str, script: str, args: list[str], name: str) -> None:
        self.name = name
        self._tmp = tempfile.TemporaryDirectory()  # outside the checkout, so `import sam3` is Meta's
        self.workdir = Path(self._tmp.name)
        command = [python, str(REPO / "bench" / script), *args]
        self.process = subprocess.Popen(
            command, cwd=self.workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.info = self._answer()
        if "error" in self.info:
            self.close()
            raise RuntimeError(self.info["error"])

    def request(self, message: dict) -> dict:
        """One request, its answer; RuntimeError with the worker's traceback when it failed."""
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            raise RuntimeError(f"{self.name} failed: {answer['error']}\n{answer.get('traceback', '')}")
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)
        self._tmp.cleanup()

    def _answer(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"the oracle worker exited (code {self.process.wait()}) without answering"}
        return json.loads(line)


def start_worker(
    args: argparse.Namespace, script: str, worker_args: list[str], name: str, logger: logging.Logger
) -> OracleWorker | None:
    """`script` in `args.oracle_python` with `--shared-tools` (given, or `shared/tools` in or beside the
    checkout), `--threads`, `--seed` and `worker_args`; None, logged, when `args.no_meta`, the oracle
    interpreter or the shared tools are missing, or the worker cannot start."""
    if args.no_meta:
        return None
    if not Path(args.oracle_python).is_file():
        logger.warning("skipping Meta's side: no oracle interpreter at %s (--oracle-python)", args.oracle_python)
        return None
    tools = args.shared_tools or next(
        (p for p in (REPO / "shared" / "tools", REPO.parent / "shared" / "tools") if p.is_dir()), None
    )
    if tools is None or not (tools / "official_reference.py").is_file():
        logger.warning("skipping Meta's side: official_reference.py not found (--shared-tools %s)", tools)
        return None
    common = ["--shared-tools", str(tools), "--threads", str(args.threads), "--seed", str(args.seed)]
    try:
        worker = OracleWorker(args.oracle_python, script, [*common, *worker_args], name)
    except RuntimeError as error:
        logger.warning("skipping Meta's side: %s", error)
        return None
    logger.info("%s: sam3 %s, torch %s", name, worker.info["sam3_version"], worker.info["torch_version"])
    return worker
