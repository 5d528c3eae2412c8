"""Every command in the README, and in the docs pages it sends a reader to, runs as written, in order.

The commands are read from the code blocks of the README and of each docs page it links (but the
pages that record what ran on the real data: `RECORDS`). Each `python -m resnet_lit ...` runs
in-process, in one scratch folder per page shared by the whole page (so the README's
`test --ckpt_path best` finds the run its quickstart's `fit` made), with the data pointed at the
stand-in and the run cut to a few steps: those options are appended, nothing of the page's own is
changed. The set-up (`python3 -m venv`, `. .venv/bin/activate`, `pip install`) is what CI itself
runs; the benchmarks, torchrun, srun, `sweep --slurm` and the DDP commands need real data, GPUs, a
cluster or several processes: each is checked to exist only (tests/test_ddp.py runs DDP on CPU
processes, tests/test_slurm.py the SLURM sweep).
"""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_lit import export, report, sweep
from resnet_lit.cli import main
from resnet_lit.models import __main__ as models_main

REPO = Path(__file__).parents[1]
README = REPO / "README.md"
# The issue 22 bar: the README is the front door (what it is, the result, install, the three
# commands, the run folder, the layout); everything else is a page in docs/.
README_MAX_BYTES = 12_000
# Pages that record what was run on the real data, for hours, with its own folders and
# placeholders (`configs/<name>.yaml`, `BEST.ckpt`): read, not run.
RECORDS = ("docs/results.md", "docs/paper.md", "docs/reliability.md")
# Appended to every command that trains or evaluates: the stand-in data, a few steps.
SHORT = ["--trainer.max_epochs=1", "--trainer.max_steps=3", "--trainer.limit_train_batches=3"]
SHORT += ["--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
SHORT += ["--trainer.limit_predict_batches=2", "--trainer.enable_progress_bar=false"]


def readme_commands(text: str) -> list[str]:
    """The shell commands of a page's code blocks (indented by 4 or fenced as sh/bash), in order."""
    commands, in_fence, fence_lang = [], False, ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_fence, fence_lang = (not in_fence), line[3:].strip()
            i += 1
            continue
        code = line[4:] if (line.startswith("    ") and not in_fence) else (line if in_fence else None)
        if code is not None and (not in_fence or fence_lang in ("sh", "bash", "shell")):
            while code.endswith("\\") and i + 1 < len(lines):  # a command continued on the next line
                i += 1
                code = code[:-1] + " " + lines[i].strip()
            code = code.split(" #")[0].strip()
            if re.match(r"(python3? |\. \.venv|pip |tensorboard |torchrun |srun |bash )", code):
                commands.append(code)
        i += 1
    return commands


def split_command(command: str) -> list[list[str]]:
    """`a && b` as [[a...], [b...]], each shell-split."""
    return [shlex.split(part) for part in command.split("&&")]


def run(argv: list[str], standin: list[str]) -> None:
    """Run one command of a page (already split) here, in-process where it is ours."""
    if (argv[:2] == ["python3", "-m"] and argv[2] == "venv") or argv[:1] == ["."]:
        return  # the environment: CI makes it with these very commands
    if argv[0] == "pip":
        extras = re.findall(r"\[(\w+)\]", " ".join(argv))
        pyproject = (REPO / "pyproject.toml").read_text()
        for extra in extras:
            assert re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), f"no extra [{extra}] in pyproject.toml"
        return
    if argv[0] == "tensorboard":
        assert shutil.which("tensorboard", path=str(Path(sys.executable).parent)), "tensorboard is not installed"
        return
    if argv[0] == "ruff":
        return  # CI runs it
    if argv[0] in ("torchrun", "srun"):
        assert "resnet_lit" in argv
        return
    if argv[0] == "bash":  # a prepared script: a lent GPU (benchmarks/), the committed logs (docs/)
        assert (REPO / argv[1]).is_file(), argv[1]
        return
    assert argv[0] in ("python", "python3"), argv
    if argv[1].startswith("benchmarks/"):
        assert (REPO / argv[1]).is_file(), argv[1]
        return
    if argv[1] == "-c":  # a snippet: run it as written, here
        result = subprocess.run([sys.executable, "-c", argv[2]], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return
    assert argv[1] == "-m", argv
    module, args = argv[2], argv[3:]
    if "--trainer.strategy" in args:
        return  # several processes: Lightning would start more copies of this test (tests/test_ddp.py runs DDP)
    if module == "resnet_lit":
        from_checkpoint = "--ckpt_path" in args and "untrained" not in args and args[0] != "fit"
        extra = [] if from_checkpoint else standin  # a checkpoint names its own data
        try:
            main([*args, *extra, *SHORT])
        except SystemExit as exit_:
            assert exit_.code in (0, None), f"{' '.join(argv)} exited with {exit_.code}"
    elif module == "resnet_lit.sweep" and any(a.startswith("--slurm") for a in args):
        return  # a SLURM job array: tests/test_slurm.py submits one to a real one-node SLURM
    elif module == "resnet_lit.sweep":
        assert sweep.main([*args, *standin, *SHORT]) == 0, " ".join(argv)
    elif module == "resnet_lit.export":
        assert export.main(args) == 0, " ".join(argv)
    elif module == "resnet_lit.report":
        assert report.main(args) == 0, " ".join(argv)
    elif module == "resnet_lit.models":
        models_main.main(args)
    elif module == "pytest":
        return  # this very suite
    else:
        raise AssertionError(f"a command this test does not know: {' '.join(argv)}")


def linked_pages(text: str) -> list[str]:
    """The docs pages a page links to (`docs/x.md`, an anchor dropped), in the order first linked."""
    return list(dict.fromkeys(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[^)]*)?\)", text)))


def pages_to_run() -> list[str]:
    """README.md, then every docs page it links that has commands, but the records of real runs."""
    pages = [page for page in linked_pages(README.read_text()) if page not in RECORDS]
    return ["README.md", *[page for page in pages if readme_commands((REPO / page).read_text())]]


def test_the_readme_has_the_commands_a_newcomer_needs():
    commands = readme_commands(README.read_text())
    text = " ".join(commands)
    for expected in ("python3 -m venv .venv", "pip install -e", "resnet_lit fit --config configs/quick/r20.yaml"):
        assert expected in text
    assert "tensorboard --logdir lightning_logs" in text
    assert "resnet_lit fit --config configs/r50.yaml" in text and "resnet_lit test --ckpt_path " in text
    # CI (.ci/run) runs the README's test command: it stays in the README, as CI runs it.
    ci = (REPO / ".ci" / "run").read_text()
    (test_command,) = [c for c in commands if c.endswith("python -m pytest")]
    assert test_command in ci
    assert not [c for c in commands if c.startswith(".venv/bin/")], "after activating, commands are bare"


def test_the_readme_is_the_front_door_and_links_a_page_per_subject():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes: move a subject into a docs/ page"
    pages = linked_pages(README.read_text())
    missing = [page for page in pages if not (REPO / page).is_file()]
    assert not missing, f"the README links pages that do not exist: {missing}"
    subjects = ("performance", "guarantees", "reliability", "clusters", "weights", "cifar10", "tensorboard")
    subjects += ("extending", "contributing", "cli", "networks", "sweep")
    assert [s for s in subjects if f"docs/{s}.md" not in pages] == []
    assert set(RECORDS) <= set(pages), "a record left out of the run must still be one the README links"


def python_block(text: str, containing: str) -> str:
    """The page's ```python block that contains `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    (block,) = [b for b in blocks if containing in b]
    return block


@pytest.fixture(scope="module")
def standin(tmp_path_factory, fashion_root) -> Path:
    """Stand-in data under both names the pages use: FashionMNIST/ and (for the MNIST module) MNIST/."""
    root = tmp_path_factory.mktemp("standin")
    shutil.copytree(fashion_root / "FashionMNIST", root / "MNIST")
    shutil.copytree(fashion_root / "FashionMNIST", root / "FashionMNIST")
    return root


def set_up_folder(folder: Path, text: str, commands: list[str], monkeypatch) -> None:
    """What a page's commands take from a clone or from the reader, in the page's own scratch folder."""
    (folder / "configs").symlink_to(REPO / "configs")  # the commands name configs/ as in a clone
    if "class MNISTDataModule" in text:  # "Add a data set": the page's module, as a user would save it
        (folder / "my_data.py").write_text(python_block(text, "class MNISTDataModule"))
        monkeypatch.syspath_prepend(str(folder))
    if any("resnet20-12fca82f.th" in c for c in commands):  # an akamaster-layout checkpoint, as named
        from test_weights import akamaster_reference, save_akamaster

        save_akamaster(akamaster_reference(20), folder / "resnet20-12fca82f.th")
    if any("configs/finetune" in c for c in commands):
        # torchvision's file, as its cache holds it (offline: a stand-in of its layout).
        import torch
        import torchvision

        hub = folder / "hub"
        (hub / "checkpoints").mkdir(parents=True)
        torch.save(torchvision.models.resnet18().state_dict(), hub / "checkpoints" / "resnet18-f37072fd.pth")
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))


@pytest.mark.slow  # every command of the README and its pages, each cut to a few steps: fits, tests, a sweep
@pytest.mark.parametrize("page", pages_to_run())
def test_every_command_of_the_readme_and_its_pages_runs_as_written_in_order(
    page, tmp_path, monkeypatch, standin, cifar10_root
):
    text = (REPO / page).read_text()
    commands = readme_commands(text)
    monkeypatch.chdir(tmp_path)
    set_up_folder(tmp_path, text, commands, monkeypatch)
    for command in commands:
        root = cifar10_root if "cifar10" in command else standin
        data = [f"--data.data_dir={root}", "--data.download=false", "--data.val_size=100", "--data.batch_size=50"]
        for argv in split_command(command):
            argv = [a.replace("SOMEWHERE", str(root)) for a in argv]
            run(argv, data)


# The CLI's option groups; an inline `--group.option value` in the docs names one of their options.
CLI_GROUPS = ("trainer", "model", "data", "insight", "stop_on_nan", "save_on_interrupt", "predictions")


def inline_switches(text: str) -> list[list[str]]:
    """The inline code spans of the docs that give options of `python -m resnet_lit`, each split."""
    spans = [shlex.split(span) for span in re.findall(r"`(--[^`]+)`", text)]
    return [span for span in spans if span[0].split(".", 1)[0].removeprefix("--") in CLI_GROUPS]


def test_every_switch_the_docs_name_inline_exists(capsys):
    known: set[str] = set()
    helps = [["fit", "--help"], ["predict", "--help"]]
    helps += [["fit", "--data.help", data] for data in ("FashionMNISTDataModule", "CIFAR10DataModule")]
    for args in helps:
        with pytest.raises(SystemExit):
            main(args)
        known |= set(re.findall(r"(--[\w.]+)", capsys.readouterr().out))
    docs = [README, *sorted((REPO / "docs").glob("*.md"))]
    switches = [span for path in docs for span in inline_switches(path.read_text())]
    assert any(span[0] == "--stop_on_nan.enabled" for span in switches)  # the one that was missing
    unknown = sorted(
        {option for span in switches for option in span if option.startswith("--") and "*" not in option} - known
    )
    assert not unknown, f"options the docs name that no --help lists: {unknown}"


def test_the_readmes_off_switches_turn_their_callbacks_off(tmp_path, monkeypatch, fashion_root, capsys):
    from resnet_lit.callbacks import SaveOnInterrupt, StopOnNonFiniteLoss
    from resnet_lit.cli import ResNetCLI

    monkeypatch.chdir(tmp_path)
    data = [f"--data.data_dir={fashion_root}", "--data.download=false", "--data.val_size=100"]
    cli = ResNetCLI(args=["--stop_on_nan.enabled", "false", "--save_on_interrupt.enabled", "false", *data], run=False)
    guards = [c for c in cli.trainer.callbacks if isinstance(c, (StopOnNonFiniteLoss, SaveOnInterrupt))]
    assert len(guards) == 2 and not any(guard.enabled for guard in guards)
