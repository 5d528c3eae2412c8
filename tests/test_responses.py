"""python -m resnet_lit.responses: Fig. 7's layer responses from checkpoints."""

import shutil
from pathlib import Path

import pytest
import torch

from resnet_lit import responses
from resnet_lit.checkpointing import load_checkpoint
from resnet_lit.models import build


def _net(arch: str, **options) -> torch.nn.Module:
    return build(arch, in_channels=1, num_classes=10, **options)


def _ckpt(trained: Path) -> Path:
    return trained / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def _plain_twin(source: Path, out: Path, gain: float) -> Path:
    """The checkpoint as its plain twin (same shapes), each response layer's BatchNorm scaled by `gain`."""
    checkpoint = load_checkpoint(source)
    arch = checkpoint["hyper_parameters"]["arch"]
    checkpoint["hyper_parameters"]["arch"] = arch.replace("resnet", "plain")
    for name in responses.response_layers(_net(arch)):
        for prefix in ("net.", "ema_net."):
            for part in ("weight", "bias"):
                key = f"{prefix}{name}.{part}"
                if key in checkpoint["state_dict"]:
                    checkpoint["state_dict"][key] = checkpoint["state_dict"][key] * gain
    torch.save(checkpoint, out)
    return out


def _table_rows(table: str) -> dict[str, list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] not in ("network", "---"):
            rows[cells[0]] = cells
    return rows


def test_response_layers_are_the_batchnorms_after_3x3_convolutions():
    assert len(responses.response_layers(_net("resnet20"))) == 19  # the stem and 2 per block, 9 blocks
    assert len(responses.response_layers(_net("plain56"))) == 55
    bottleneck = responses.response_layers(_net("resnet50"))
    assert len(bottleneck) == 16 and all(name.endswith(".bn2") for name in bottleneck)  # the 3x3 of each block
    assert not any("downsample" in name for name in responses.response_layers(_net("resnet20", shortcut="B")))


def test_std_is_per_channel_over_images_and_positions():
    recorder = responses._Recorder()
    out = torch.randn(10, 3, 5, 5) * torch.tensor([1.0, 2.0, 4.0]).view(1, 3, 1, 1) + 7
    for chunk in out.split(4):  # batch by batch, as the test loop feeds it
        recorder(None, None, chunk)
    expected = out.transpose(0, 1).reshape(3, -1).double().std(dim=1).mean()
    assert recorder.std() == pytest.approx(float(expected), rel=1e-9)


def test_plain_twin_with_larger_responses_draws_both_panels_and_a_table(trained, fashion_root, tmp_path, capsys):
    resnet = _ckpt(trained)
    plain = _plain_twin(resnet, tmp_path / "plain.ckpt", gain=3.0)
    out, table = tmp_path / "fig" / "responses.png", tmp_path / "responses.md"
    args = [str(resnet), str(plain), "--out", str(out), "--table", str(table), "--data_dir", str(fashion_root)]
    assert responses.main([*args, "--logdir", str(tmp_path / "tb")]) == 0
    rows = _table_rows(table.read_text())
    assert set(rows) == {"ResNet-8", "plain-8"}
    assert float(rows["plain-8"][3]) > 2 * float(rows["ResNet-8"][3])  # mean std: the scaled net's is larger
    assert rows["ResNet-8"][1] == "1" and rows["ResNet-8"][2] == "7"
    assert out.stat().st_size > 0 and list((tmp_path / "tb").glob("plain-8/events.out.tfevents.*"))

    measured = [responses.measure(str(p), str(fashion_root)) for p in (resnet, plain)]
    assert all(p > r for p, r in zip(measured[1].std, measured[0].std, strict=True))  # every layer
    figure = responses.plot(measured, tmp_path / "again.png")
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == ["by layer index", "sorted by magnitude"]
    assert all(len(axes.lines) == 2 for axes in figure.axes)  # one curve per network in each panel
    sorted_curve = figure.axes[1].lines[0].get_ydata()
    assert list(sorted_curve) == sorted(sorted_curve, reverse=True)


def test_checkpoints_of_one_network_give_mean_std_and_n(trained, fashion_root, tmp_path):
    first = _ckpt(trained)
    second = tmp_path / "seed1.ckpt"
    shutil.copy(first, second)
    measured = [responses.measure(str(p), str(fashion_root)) for p in (first, second)]
    rows = _table_rows(responses.markdown(measured))
    assert list(rows) == ["ResNet-8"]
    assert rows["ResNet-8"][1] == "2" and rows["ResNet-8"][3].endswith("± 0.000")  # the same weights twice
    figure = responses.plot(measured, tmp_path / "band.png")
    assert figure.axes[0].collections  # the band between the smallest and the largest


def test_refusals_are_one_line(trained, tmp_path, capsys):
    assert responses.main([str(tmp_path / "missing.ckpt")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert responses.main([str(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_saved_responses_redraw_without_the_checkpoints(trained, fashion_root, tmp_path, capsys):
    saved = tmp_path / "responses.json"
    first, again = tmp_path / "a.md", tmp_path / "b.md"
    args = [str(_ckpt(trained)), "--data_dir", str(fashion_root), "--save", str(saved), "--table", str(first)]
    assert responses.main(args) == 0
    assert responses.main(["--load", str(saved), "--table", str(again), "--out", str(tmp_path / "f.png")]) == 0
    assert first.read_text() == again.read_text()
    # Several saved files make one table, each network's checkpoints pooled (here the same one twice).
    assert responses.main(["--load", str(saved), str(saved), "--table", str(again)]) == 0
    row = next(line for line in again.read_text().splitlines() if line.startswith("| resnet") or "ResNet" in line)
    assert row.split("|")[2].strip() == "2", row
    capsys.readouterr()
    assert responses.main([str(_ckpt(trained)), "--load", str(saved)]) == 2
    assert responses.main(["--load", str(first)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
