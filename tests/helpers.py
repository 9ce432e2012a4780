"""Run configurations shared by the training and pretraining tests.

One helper per objective, with the CPU-sized defaults every test module uses; a module fixes its
own counts and defaults with ``functools.partial`` (``config = partial(train_config, epochs=3)``),
and a test overrides any field by keyword.
"""

from __future__ import annotations

from reben_tools.learn.runtime.config import TrainConfig
from reben_tools.learn.training.pretrain import PretrainConfig

SMALL = dict(stem_width=4, widths=(4, 8, 8, 16))
"""resnet_micro narrowed further: a step of 16 samples takes ~30 ms on one core."""


def train_config(archive_dir, out, **overrides) -> TrainConfig:
    """A ``reben train`` configuration for a CPU test: resnet_micro (``SMALL``) on S1, 2 epochs of batch 16,
    no DataLoader workers, no progress bar, no test evaluation."""
    base = dict(
        archive=str(archive_dir),
        bands="S1",
        model="resnet_micro",
        out=str(out),
        epochs=2,
        batch_size=16,
        lr=1e-2,
        workers=0,
        device="cpu",
        progress=False,
        evaluate_test=False,
        model_kwargs=SMALL,
    )
    return TrainConfig(**{**base, **overrides})


def pretrain_config(archive_dir, out, **overrides) -> PretrainConfig:
    """A ``reben pretrain`` configuration for a CPU test: croma_micro, 2 epochs of batch 8, warm-up 1 step."""
    base = dict(
        archive=str(archive_dir),
        model="croma_micro",
        out=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-3,
        warmup_steps=1,
        workers=0,
        device="cpu",
        progress=False,
    )
    return PretrainConfig(**{**base, **overrides})


def as_terminal_job() -> None:
    """``preexec_fn`` of a child the test interrupts like a terminal does: SIGINT (and SIGQUIT) back to
    their defaults. A shell starts background jobs with both ignored and children inherit that, and
    Python then installs no KeyboardInterrupt handler, so a CI runner that starts the suite in the
    background would otherwise see Ctrl-C do nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
