"""What a new user trips on (issue 24): numbers, read-only outputs and Ctrl-C, the same for every command.

Each test runs the command a user types (in a subprocess where the issue names the exact
command, else through typer's runner) and checks the one line it prints, its exit status and
that nothing was left half-written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer.main
from helpers import as_terminal_job
from training_archive import build_learnable_archive
from typer.testing import CliRunner

from reben_tools.cli import app
from reben_tools.format.atomic import write_json_atomic
from reben_tools.release.synthetic_release import write_synthetic_release

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def reben(*args, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``reben ARGS`` in a fresh interpreter (this checkout first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "reben_tools.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def one_error_line(text: str) -> str:
    """The single non-empty line of ``text``, which must start with ``error: `` (no traceback, no box)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    facts = build_learnable_archive(
        tmp_path_factory.mktemp("newuser") / "ARCHIVE", counts={"train": 16, "validation": 8, "test": 8}, shards=1
    )
    return Path(facts["root"])


# --------------------------------------------------------------------------- 1: every command's numbers


def _command_functions() -> dict[str, typing.Callable]:
    return {
        info.name or info.callback.__name__: getattr(info.callback, "__wrapped__", info.callback)
        for info in app.registered_commands
    }


def _numeric(func) -> dict[str, type]:
    found = {}
    for name, hint in typing.get_type_hints(func).items():
        kinds = set(typing.get_args(hint) or (hint,)) - {type(None)}
        if kinds in ({int}, {float}):
            found[name] = kinds.pop()
    return found


ZERO_ALLOWED = {
    "lr",
    "weight_decay",
    "dropout",
    "drop_path",
    "warmup_steps",
    "seed",
    "subset_seed",
    "buffer_m",
    "max_gap_days",
    "mix_prob",
    "max_cloud",
    "repeats",
    ("train", "workers"),
    ("evaluate", "workers"),
    ("probe", "workers"),
    ("pretrain", "workers"),
    ("embed", "workers"),
    ("retrieve", "workers"),
}
"""Options for which 0 is a meaningful value (no weight decay, no buffer, load in the main process ...)."""


def _required_arguments(command, tmp_path: Path, skip: str) -> list[str]:
    """Values for a command's required parameters (paths that do not exist; valid numbers)."""
    args: list[str] = []
    for param in command.params:
        if not param.required or param.name == skip:
            continue
        value = "0.5" if param.name == "fraction" else str(tmp_path / f"given-{param.name}")
        args += [value] if param.param_type_name == "argument" else [param.opts[0], value]
    return args


def test_every_numeric_option_of_every_command_is_refused_in_one_line_when_out_of_range(tmp_path):
    commands = typer.main.get_command(app).commands
    functions = _command_functions()
    walked = []
    for name, command in commands.items():
        for param_name, kind in _numeric(functions[name]).items():
            flag = "--" + param_name.replace("_", "-")
            bad = ["-1"] + ([] if param_name in ZERO_ALLOWED or (name, param_name) in ZERO_ALLOWED else ["0"])
            bad += ["nan", "inf"] if kind is float else []
            for value in bad:
                args = [name, *_required_arguments(command, tmp_path, param_name), flag, value]
                result = runner.invoke(app, args)
                assert result.exit_code == 1, (args, result.output)
                assert isinstance(result.exception, SystemExit), (args, result.exception)
                line = one_error_line(result.output)
                assert line.startswith(f"error: {flag} must be "), (args, line)
                assert line.endswith(f"(got {float(value) if kind is float else int(value)})"), (args, line)
            walked.append((name, param_name))
    assert not list(tmp_path.iterdir())  # nothing read, nothing written
    names = {name for name, _ in walked}
    assert {"train", "pretrain", "evaluate", "probe", "embed", "encode", "build", "demo", "subset", "audit"} <= names
    assert {("pretrain", "epochs"), ("pretrain", "lr"), ("pretrain", "mask_ratio"), ("split", "buffer_m")} <= set(
        walked
    )


def test_pretrain_refuses_negative_epochs_and_lr_before_making_a_run_folder(archive, tmp_path):
    """The issue's commands: they used to finish after 0 steps (empty plots) or end in a torch traceback."""
    run = tmp_path / "runs" / "negp"
    common = ["pretrain", "--archive", archive, "--model", "croma_micro", "--out", run]
    result = reben(*common, "--epochs", "-1", "--batch-size", "32", "--device", "cpu")
    assert result.returncode == 1
    assert one_error_line(result.stderr) == "error: --epochs must be an integer >= 1 (got -1)"
    result = reben(*common, "--epochs", "1", "--lr", "-1", "--device", "cpu")
    assert result.returncode == 1
    assert one_error_line(result.stderr) == "error: --lr must be a number >= 0 (got -1.0)"
    assert result.stdout == ""
    assert not run.exists() and not run.parent.exists()  # item 12: no run without steps, so no empty curves


# --------------------------------------------------------------------------- 2: read-only output locations


@pytest.fixture
def read_only(tmp_path):
    """An empty folder no file can be created in: read-only bind mount (as root), else chmod 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "--bind", folder, folder], capture_output=True).returncode != 0:
        if subprocess.run(["chattr", "+i", folder], capture_output=True).returncode != 0:
            pytest.skip("running as root without mount or chattr: no way to make a folder read-only here")
        yield folder
        subprocess.run(["chattr", "-i", folder], check=True)
        return
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", folder], capture_output=True).returncode != 0:
            pytest.skip("bind mounts cannot be made read-only here")
        yield folder
    finally:
        subprocess.run(["umount", folder], check=True)


def _patch_id(archive: Path) -> str:
    return pq.read_table(archive / "metadata.parquet", columns=["patch_id"]).column(0)[0].as_py()


@pytest.fixture(scope="module")
def run_dir(archive, tmp_path_factory) -> Path:
    """A finished one-epoch training run (its checkpoints for evaluate)."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["train", "--archive", archive, "--bands", "S1", "--model", "resnet_micro", "--out", out]
    result = runner.invoke(app, [str(a) for a in args + ["--epochs", "1", "--device", "cpu", "--no-test", "-q"]])
    assert result.exit_code == 0, result.output
    return out


def test_subset_into_a_read_only_folder_is_one_line_and_writes_nothing(archive, read_only):
    """The issue's command: a 40-line traceback with atomic.py's clean-up raising a second error on top."""
    result = reben("subset", archive, "--fraction", "0.1", "--out", read_only / "m.parquet")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {read_only / 'm.parquet'}: cannot write in {read_only} (")
    assert line.endswith(("(Read-only file system)", "(Permission denied)", "(Operation not permitted)"))
    assert result.stdout == "" and list(read_only.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "merge", "show", "train", "audit", "split", "export-tiff"])
def test_every_writer_refuses_a_read_only_output_in_one_line(command, archive, run_dir, read_only):
    target = read_only / "out"
    args = {
        "evaluate": ["--archive", archive, "--checkpoint", run_dir / "checkpoints/best.pt", "--out", target],
        "merge": [archive, target],
        "show": [archive, _patch_id(archive), "--out", read_only / "patch.png"],
        "train": ["--archive", archive, "--bands", "S1", "--model", "resnet_micro", "--out", target, "--epochs", "1"],
        "audit": [archive, "--out", target, "--permutations", "2"],
        "split": [archive, "--out", read_only / "split.parquet"],
        "export-tiff": [archive, target],
    }[command]
    device = ["--device", "cpu"] if command in ("evaluate", "train") else []
    result = runner.invoke(app, [command, *map(str, args), *device])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert one_error_line(result.output).startswith("error: ")
    assert f"cannot write in {read_only} (" in result.output
    assert list(read_only.iterdir()) == []


def test_atomic_write_in_a_read_only_folder_raises_the_first_error_alone(read_only):
    with pytest.raises(OSError, match=r"Read-only file system|Permission denied|Operation not permitted") as raised:
        write_json_atomic(read_only / "x.json", {"a": 1})
    assert raised.value.__context__ is None  # the clean-up did not raise on top of it
    assert list(read_only.iterdir()) == []


# --------------------------------------------------------------------------- 3: Ctrl-C


def interrupt(args: list, wait_for: Path, cwd: Path, timeout: float = 240) -> tuple[int, str, str]:
    """Start ``reben ARGS``, press Ctrl-C (SIGINT to its process group) once ``wait_for`` exists."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "reben_tools.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=as_terminal_job,
    )
    started = time.monotonic()
    try:
        while not wait_for.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() - started < timeout, f"{wait_for} never appeared"
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, out, err


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_ctrl_c_in_training_exits_130_saying_how_to_resume(command, archive, tmp_path):
    model = {"train": ["--bands", "S1", "--model", "resnet_micro"], "pretrain": ["--model", "croma_micro"]}[command]
    args = [command, "--archive", archive, *model, "--out", "run", "--epochs", "100", "--batch-size", "8"]
    code, out, err = interrupt(
        args + ["--device", "cpu", "--workers", "1", "-q"], tmp_path / "run/checkpoints/last.pt", tmp_path
    )
    assert code == 130, err  # what it printed, should the interrupt ever be met elsewhere
    assert err == f"interrupted; resume with: reben {command} --out run --resume\n"
    assert out == ""


@pytest.mark.parametrize("phase", ["inputs", "archive/shards"])
def test_ctrl_c_in_the_demo_exits_130_saying_how_to_resume(phase, tmp_path):
    """`reben demo` used to exit 1 with 'error: interrupted...' in its build; `reben build` exits 130, and so
    does the demo now, while it generates the region (inputs) or builds the archive (archive/shards)."""
    code, _, err = interrupt(["demo", "--out", "demo", "-q"], tmp_path / "demo" / phase, tmp_path)
    assert code == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "rerun the same command to resume" in lines[0]
    assert "error" not in err and "Traceback" not in err


# --------------------------------------------------------------------------- 5: encode's summary


def test_encode_of_an_s1_folder_counts_what_it_wrote(tmp_path):
    """The issue's command printed '0 patch(es) ... 0.0 patches/s' while its bar counted every S1 patch."""
    release = write_synthetic_release(tmp_path / "release", n_patches=6, seed=11)
    result = reben("encode", "--s1-dir", release.s1_dir, "--out", "s1-archive", "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("s1-archive: 6 patch(es) (6 S1 without S2), 6 value(s) (6 S1) in 1 shard(s), 0 skipped, ")
    assert line.endswith(" values/s)") and " (0.0 values/s)" not in line
    args = ["--s2-dir", release.s2_dir, "--s1-dir", release.s1_dir, "--out", tmp_path / "pairs", "-q"]
    result = runner.invoke(app, ["encode", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert "6 patch(es) (6 S2 with S1), 12 value(s) (6 S2, 6 S1) in 1 shard(s)" in result.output


# --------------------------------------------------------------------------- 6: verify's arguments first


def test_verify_of_a_bare_lmdb_checks_its_metadata_arguments_before_reading_values(archive, tmp_path):
    lmdb = tmp_path / "LMDB"
    assert runner.invoke(app, ["merge", str(archive), str(lmdb), "-q"]).exit_code == 0
    for given, what in ((archive, "a folder"), (tmp_path / "missing.parquet", "not found")):
        result = reben("verify", lmdb, "--metadata", given, "-q")
        assert result.returncode == 2
        message = f"error: --metadata {given}: {what}; expected a reBEN metadata parquet file"
        assert one_error_line(result.stderr) == message
        assert result.stdout == ""
    result = reben("verify", lmdb, "--metadata", archive / "metadata.parquet", "-q")
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith(f"{lmdb}: OK"), result.stderr


# --------------------------------------------------------------------------- small inconsistencies


def test_help_at_80_columns_keeps_every_option_name_whole_and_shows_no_bool_metavar():
    """`COLUMNS=80 reben train --help` cut `--include-snow-cl…` and `--no-sync-batchn…`; flags showed `<bool>`."""
    env = {**os.environ, "COLUMNS": "80"}
    result = subprocess.run(
        [sys.executable, "-m", "reben_tools.cli", "train", "--help"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0
    assert "--include-snow-cloud " in result.stdout and "--no-sync-batchnorm" in result.stdout
    for name, command in typer.main.get_command(app).commands.items():
        text = runner.invoke(app, [name, "--help"], terminal_width=80).output
        assert "\u2026" not in text and "<bool>" not in text, name
        names = {opt for param in command.params for opt in param.opts + param.secondary_opts if opt.startswith("--")}
        assert all(opt in text for opt in names - {"--no-progress"}), name  # --no-progress is hidden


def test_build_help_says_the_config_is_optional_and_what_it_defaults_to():
    text = " ".join(runner.invoke(app, ["build", "--help"], terminal_width=200).output.split())
    assert "Usage: reben build [OPTIONS] [config]" in text
    assert "optional: without it, reBEN's defaults (the values of pipelines/reben.toml)" in text


@pytest.mark.slow
def test_the_demo_prints_every_path_relative_to_where_it_ran(tmp_path):
    result = reben("demo", "--out", "demo", "-q", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    listed = result.stdout.split("where everything is:")[1].split()
    paths = dict(zip(listed[::2], listed[1::2], strict=True))
    assert {"archive", "map", "audit", "expected"} <= set(paths)
    for label, path in paths.items():
        assert not Path(path).is_absolute() and path.startswith("demo/"), (label, path)
        assert (tmp_path / path).exists(), (label, path)
    assert paths["map"] == "demo/archive/summary_map.png"
