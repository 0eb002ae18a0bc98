"""``python -m pvtt_train sample``: files in, an MP4 out, with the nodes' checks and background compositing."""

import cv2
import numpy as np
import pytest
import torch
from _wan_fixtures import designer_inputs, make_wan_vace_folder
from PIL import Image

from pvtt_train.__main__ import main
from pvtt_train.sample_cli import read_frames


def _write_mp4(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8.0, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    template, mask, product = designer_inputs(frames=13, height=40, width=48, seed=5)
    smooth = torch.nn.functional.avg_pool2d(template.permute(0, 3, 1, 2), 5, 1, 2).permute(0, 2, 3, 1)
    _write_mp4(root / "template.mp4", (smooth * 255).round().byte().numpy())
    (root / "mask").mkdir()
    for i, m in enumerate(mask):  # a frame folder, as PVTT Load Video also takes
        Image.fromarray((m * 255).byte().numpy()).save(root / "mask" / f"mask_{i + 1}.png")
    Image.fromarray((product * 255).byte().numpy()).save(root / "product.png")
    return root, make_wan_vace_folder(root / "wan"), mask


def test_sample_writes_the_mp4_with_the_template_kept_outside_the_mask(files, capsys):
    root, folder, mask = files
    out = root / "out" / "transfer.mp4"
    assert main(["sample", "--model", str(folder), "--template", str(root / "template.mp4"), "--mask",
                 str(root / "mask"), "--product", str(root / "product.png"), "--prompt", "a red bottle",
                 "--negative-prompt", "blurry", "--steps", "2", "--out", str(out)]) == 0
    video, fps = read_frames(out, "--out")
    template, _ = read_frames(root / "template.mp4", "--template")
    assert video.shape == (13, 40, 48, 3) and fps == pytest.approx(8.0)
    assert "wrote" in capsys.readouterr().out and not list(out.parent.glob(".*.tmp"))
    outside = torch.nn.functional.max_pool2d(mask[:, None], 9, 1, 4)[:, 0] < 0.5  # beyond dilate + feather
    inside = -torch.nn.functional.max_pool2d(-mask[:, None], 9, 1, 4)[:, 0] > 0.5  # 4 px in: fully generated
    assert inside.any()
    error = (video - template).abs().mean(-1)
    assert error[outside].mean() < 0.03  # the template, through a second lossy MP4 encode
    assert error[inside].mean() > max(0.05, 2 * error[outside].mean())  # generated where the product goes


def test_sample_refuses_bad_input_with_one_line(files, capsys, tmp_path):
    root, folder, _ = files
    base = ["sample", "--model", str(folder), "--template", str(root / "template.mp4"), "--product",
            str(root / "product.png"), "--steps", "1"]
    existing = tmp_path / "taken.mp4"
    existing.write_bytes(b"not ours")
    with pytest.raises(SystemExit) as exc:
        main(base + ["--mask", str(root / "mask"), "--out", str(existing)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"not ours"
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(blank / "0.png")
    with pytest.raises(SystemExit) as exc:
        main(base + ["--mask", str(blank), "--out", str(tmp_path / "o.mp4")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "mask" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()
