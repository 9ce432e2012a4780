"""Geography shared by building, encoding and splitting: MGRS tiles and reBEN's split rule.

Owns: ``mgrs_grid`` (tile -> UTM CRS and upper-left corner) and ``split_rule`` (reBEN's
distance-to-tile-edge rule).
Does not own: the archive format (``format``), split strategies and audits (``splits``).
May import: ``format`` and third-party libraries; never ``build``, ``release``, ``splits``,
``learn`` or ``commands``.
"""
