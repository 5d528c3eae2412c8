"""What a run says besides its refusals: no notice a user learns to ignore, a warning where a GPU
recipe runs on a CPU, and a fit's closing line saying where its results are.
"""

import logging
import os
import re
import warnings

from lightning.pytorch import Trainer

from resnet_lit.module import ResNetClassifier

# Lightning's notices that say nothing about the run: advertising, and "no GPU" on a machine
# without one. Matched exactly; "GPU available: True, used: False" (a GPU left idle) still shows.
QUIET_NOTICES = (
    re.compile(r"💡 Tip: .*"),
    re.compile(r"GPU available: False, used: False"),
    re.compile(r"TPU available: False, using: 0 TPU cores"),
)


def quiet() -> None:
    """Silence the warnings and Lightning notices that say nothing about this run (`python -m resnet_lit`)."""
    # The data sets live in memory and a batch is one tensor index: worker processes would only
    # add copies, so num_workers=0 is deliberate and Lightning's hint about it is noise here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(drop_lightning_notices)
    warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning 2.6 itself
    # jsonargparse >= 4.49 deprecates what LightningCLI 2.6 calls (these, and the banner before the first).
    deprecated = (
        r"\s*(By default only one Jsonargparse|``ArgumentParser.add_instantiator``|``instantiate_classes``|skip_none)"
    )
    warnings.filterwarnings("ignore", deprecated, DeprecationWarning, r"lightning\.pytorch\.cli")


def drop_lightning_notices(record: logging.LogRecord) -> bool:
    """A logging filter: False for the QUIET_NOTICES."""
    return not any(pattern.fullmatch(str(record.getMessage())) for pattern in QUIET_NOTICES)


def gpu_recipe_on_cpu(trainer: Trainer, model: ResNetClassifier) -> str | None:
    """One line when a GPU recipe (CUDA graphs: compile mode reduce-overhead; configs/gpu/) runs on a CPU."""
    hp = model.hparams
    if trainer.strategy.root_device.type != "cpu" or not (hp.compile and hp.compile_mode == "reduce-overhead"):
        return None
    bf16 = " and bf16-mixed (emulated, and slower, on a CPU without AMX)" if "bf16" in str(trainer.precision) else ""
    return (
        f"a GPU recipe is running on a CPU: compile mode reduce-overhead{bf16}; its CUDA graphs do nothing here, "
        "compiling takes a minute or more before the first step, and the run is far slower than the CPU "
        "configs (configs/*.yaml); stop it with Ctrl-C unless that is what you want"
    )


def fit_summary(trainer: Trainer) -> str:
    """One closing line of a fit: where its run folder is, its best checkpoint, and what to run next."""
    folder = _short(trainer.log_dir or trainer.default_root_dir)
    checkpoint = trainer.checkpoint_callback
    best = getattr(checkpoint, "best_model_path", "") if checkpoint is not None else ""
    if not best:
        return f"fit: done; run folder {folder} (no checkpoint written)"
    score = getattr(checkpoint, "best_model_score", None)
    monitor = getattr(checkpoint, "monitor", None) or "score"
    said = f" ({monitor} {score.item():.4f})" if score is not None else ""
    best = _short(best)
    next_ = f"python -m resnet_lit test --ckpt_path {best}"
    return f"fit: done; run folder {folder}; best checkpoint {best}{said}; next: {next_}"


def _short(path: str) -> str:
    """`path` relative to the working folder where it lies below it, else as it is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
