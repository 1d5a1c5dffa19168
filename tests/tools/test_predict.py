"""The prediction CLI end to end on the tiny preset: checkpoint in, detections printed, overlay out."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from sam3 import build_model
from sam3.tools import predict


def test_predict_prints_boxes_and_writes_an_overlay(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model("tiny")
    checkpoint = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    image_path = tmp_path / "frame.png"
    image = Image.new("RGB", (150, 100), (20, 20, 20))
    image.paste((220, 30, 30), (30, 20, 90, 70))
    image.save(image_path)
    overlay = tmp_path / "overlay.png"

    predict.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(image_path),
            "--prompt",
            "red square",
            "--model",
            "tiny",
            "--threshold",
            "0",
            "--out",
            str(overlay),
            "--device",
            "cpu",
        ]
    )

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("16 detections of 'red square'")  # threshold 0 keeps every query
    rows = [line.split() for line in lines[1:17]]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    for r in rows:
        x0, y0, x1, y1 = map(float, r[3:7])
        assert 0 <= x0 <= x1 <= 150 and 0 <= y0 <= y1 <= 100
    assert lines[-1] == f"overlay written to {overlay}"
    written = Image.open(overlay)
    assert written.size == (150, 100)
    assert written.convert("RGB").tobytes() != image.tobytes()  # something was drawn


def test_predict_matches_the_model_forward():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    image = Image.new("RGB", (224, 224), (200, 40, 40))
    detections = predict.predict(model, image, "red square", 224, threshold=-1.0)
    pixels = torch.tensor([200 / 255, 40 / 255, 40 / 255]).view(1, 3, 1, 1).expand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        vision = model.backbone.forward_image(pixels)
        text = model.backbone.forward_text(["red square"])
        out = model.forward_grounding(vision, text, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    scores = out.scores()[0]
    torch.testing.assert_close(detections["scores"], scores.sort(descending=True).values, atol=1e-5, rtol=1e-4)
    assert detections["masks"].shape == (16, 224, 224)


def test_no_detection_above_the_threshold_writes_the_plain_image(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(build_model("tiny").state_dict(), checkpoint)
    image_path = tmp_path / "frame.png"
    Image.new("RGB", (64, 48), (20, 20, 20)).save(image_path)
    overlay = tmp_path / "overlay.png"

    predict.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(image_path),
            "--prompt",
            "red square",
            "--model",
            "tiny",
            "--threshold",
            "1.0",
            "--out",
            str(overlay),
            "--device",
            "cpu",
        ]
    )

    assert capsys.readouterr().out.splitlines()[0].startswith("0 detections of 'red square'")
    assert Image.open(overlay).size == (64, 48)


@pytest.mark.slow  # builds the full-size default preset to find that the tiny weights do not fit it
def test_a_checkpoint_without_model_config_that_misfits_the_default_asks_for_the_preset(tmp_path, capsys):
    checkpoint = tmp_path / "old_training_checkpoint.pt"
    torch.save({"model": build_model("tiny").state_dict(), "step": 3}, checkpoint)  # before configs were stored
    image_path = tmp_path / "frame.png"
    Image.new("RGB", (64, 48)).save(image_path)

    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--checkpoint", str(checkpoint), "--image", str(image_path), "--prompt", "x", "--device", "cpu"])

    assert exit_info.value.code == 2
    assert "pass --model with the preset it was trained with (sam3, tiny)" in capsys.readouterr().err


def test_predict_segments_clicks_and_a_box(tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(build_model("tiny").state_dict(), checkpoint)
    image_path = tmp_path / "frame.png"
    Image.new("RGB", (150, 100), (20, 20, 20)).save(image_path)
    overlay = tmp_path / "click.png"
    predict.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--image",
            str(image_path),
            "--points",
            "40,30",
            "60,50,0",
            "--box",
            "10,10,90,70",
            "--model",
            "tiny",
            "--out",
            str(overlay),
            "--device",
            "cpu",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("interactive mask in") and len(lines) == 3
    assert 0 <= float(lines[1].split()[1]) <= 1
    assert Image.open(overlay).size == (150, 100)
