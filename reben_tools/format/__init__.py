"""The reben-tools archive format: bands, names, labels, value codec, archive files, statistics, locks.

The lowest layer of the package: everything that defines what an archive is and how its
files are written and read (``layout``, ``atomic``, ``shards``, ``metadata``, ``manifest``,
``reader``), plus the reBEN facts they rest on (``bands``, ``naming``, ``labels``, ``codec``).

Owns: the modules listed above, ``stats`` (band moments) and ``locking`` (output lock).
Does not own: geography (``geo``), building, encoding or splitting archives (``build``,
``release``, ``splits``), learning (``learn``), the CLI (``commands``).
May import: ``reben_tools.__version__``, ``reben_tools.resources`` and third-party
libraries; never another ``reben_tools`` subpackage.
"""
