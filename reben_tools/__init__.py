"""reben-tools: build, convert, audit and stream the refined BigEarthNet (reBEN) archive."""

__version__ = "0.1.0"
