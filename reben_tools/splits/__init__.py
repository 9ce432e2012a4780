"""Dataset splits: patch tables, split strategies and the spatial-correlation audit.

Owns: ``patches`` (patch tables, INPUT loading), ``strategies`` (split strategies, split
files), ``audit_measures``/``audit_figures``/``audit`` (the audit).
Does not own: reBEN's split rule itself (``geo.split_rule``), the archive format (``format``),
building or encoding archives (``build``, ``release``).
May import: ``format``, ``geo`` and third-party libraries; never ``build``, ``release``,
``learn`` or ``commands``.
"""
