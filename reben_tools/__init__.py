"""reben-tools: build, convert, audit and stream the refined BigEarthNet (reBEN) archive.

Public re-exports are lazy, so ``import reben_tools`` does not import torch:
``reben_tools.load_encoder(spec)`` is :func:`reben_tools.learn.models.encoders.load_encoder`.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_encoder"]


def __getattr__(name: str):
    if name == "load_encoder":
        from reben_tools.learn.models.encoders import load_encoder

        return load_encoder
    raise AttributeError(f"module 'reben_tools' has no attribute {name!r}")
