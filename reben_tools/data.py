"""Public import path of the PyTorch dataset: ``from reben_tools.data import ReBENDataset, collate``.

The dataset lives in :mod:`reben_tools.learn.dataset`; this module re-exports its public names
so code written against the README keeps working.
"""

from reben_tools.learn.dataset import *  # noqa: F401,F403
from reben_tools.learn.dataset import __all__  # noqa: F401
