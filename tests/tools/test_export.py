"""The export CLI end to end on the tiny preset: checkpoint in, `.pt2` out, its check against eager logged."""

from __future__ import annotations

import logging
import re

import torch

from sam3 import build_model
from sam3.tools import export


def test_export_writes_a_loadable_program_and_logs_its_diff(tmp_path, caplog):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(build_model("tiny").state_dict(), checkpoint)
    out = tmp_path / "tiny.pt2"

    with caplog.at_level(logging.INFO, logger="sam3.tools.export"):
        export.main(["--checkpoint", str(checkpoint), "--model", "tiny", "--image-size", "56", "--out", str(out)])

    diff_line, size_line = [r.getMessage() for r in caplog.records if r.name == "sam3.tools.export"]
    diff = float(re.search(r"max \|diff\| (\S+)", diff_line).group(1))
    assert diff_line.startswith("exported vs eager, 3 images x 2 prompts") and diff <= 1e-5
    assert size_line == f"exported artifact {out}: {out.stat().st_size / 2**20:.1f} MB"
    outputs = torch.export.load(out).module()(torch.zeros(1, 3, 56, 56), torch.zeros(1, 32, dtype=torch.int64))
    assert [t.shape[0] for t in outputs] == [1] * 5
