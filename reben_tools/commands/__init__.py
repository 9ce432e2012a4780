"""The ``reben`` command line, one module per group of commands.

Owns: argument parsing, option validation, one-line error messages and exit codes. Each module
exposes ``register(app: typer.Typer)``; ``reben_tools.cli`` wires them.
Does not own: any behaviour behind a command; that lives in the part the command drives.
May import: every part (format, geo, build, release, splits, learn), lazily inside the command
functions so that ``reben --help`` stays fast.
"""
