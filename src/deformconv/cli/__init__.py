"""The ``deformconv`` command: ``demo``, ``train``, ``eval``, ``viz``, ``bench``, ``export``.

Each subcommand takes flags, an optional ``--config FILE`` (YAML or TOML; flags win) and
``--threads N`` (CPU threads of torch, which the CPU kernels use too).
User errors (bad paths, unknown models, bad values, a run whose loss diverged) print one
line and exit with code 2; a write the system refused (disk or quota full, a file past
``ulimit -f``, a read-only file system) prints one line and exits with code 1.
Set ``DEFORMCONV_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .._extras import MissingExtraError, extra_of, install_hint
from .._paths import os_errors
from . import bench, demo, evaluate, export, train, viz
from ._common import (
    AppendOverDefault,
    CLIError,
    add_config_option,
    add_threads_option,
    apply_config_file,
    given_options,
    set_threads,
)

__all__ = ["CLIError", "build_parser", "main"]

COMMANDS = (demo, train, evaluate, viz, bench, export)
DEBUG_ENV = "DEFORMCONV_DEBUG"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are one line and a pointer to ``--help``, as the command's other
    errors are (argparse prints the whole usage, some twenty lines for ``train``), and whose
    ``action="append"`` flags replace a config file's list (:class:`AppendOverDefault`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "append", AppendOverDefault)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser by name."""
    from .. import __version__

    parser = _Parser(
        prog="deformconv",
        description="Deformable ConvNets (Dai et al., ICCV 2017): train, evaluate and "
                    "visualise deformable networks and their plain twins; nothing to download.",
        epilog="start with: deformconv demo   (a few minutes on a laptop CPU)",
        allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"deformconv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                       parser_class=_Parser)
    commands = {}
    for module in COMMANDS:
        sub = module.add_parser(subparsers)
        sub.allow_abbrev = False  # every option under its full name: see given_options
        add_config_option(sub)
        add_threads_option(sub)
        commands[sub.prog.split()[-1]] = sub
    return parser, commands


def _parse(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser],
           argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with unknown options after the command reported by the
    command's parser (argparse reports them as the top-level command's)."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # The top level's options (--help, --version: no values) come before the command.
        first = next(i for i, token in enumerate(argv) if not token.startswith("-"))
        before = argv[:first]
        culprit = parser if before else commands[args.command]
        culprit.error(f"unrecognized arguments: {' '.join(before or unknown)}")
    return args


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a bad input rather than a bug (one-line message, exit 2)."""
    errors: list[type[BaseException]] = [CLIError, ValueError, FileNotFoundError,
                                         FileExistsError, NotADirectoryError,
                                         IsADirectoryError, PermissionError,
                                         FloatingPointError]  # a diverged run: lower lr
    from ..data import NoReadableSamplesError, SampleError
    from ..engine import CheckpointError, RunInProgressError

    return (*errors, CheckpointError, RunInProgressError, SampleError, NoReadableSamplesError)


# errno values of a write the system refused: a full disk or quota, a file grown past
# `ulimit -f`, a read-only file system. Other OSErrors may be bugs: they keep their traceback.
_WRITE_REFUSED = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _refused_write(err: BaseException) -> OSError | None:
    """The OSError of a refused write (:data:`_WRITE_REFUSED`) that ``err`` is or that its
    ``__cause__`` / ``__context__`` chain holds (:func:`deformconv._paths.os_errors`), or
    None."""
    return next((e for e in os_errors(err) if e.errno in _WRITE_REFUSED), None)


def _write_message(err: OSError) -> str:
    """``cannot write <file>: [Errno N] <reason>``, or without the file where the OSError
    does not name one (a failed ``write`` on an open file that no
    :func:`deformconv._paths.naming_the_file` named)."""
    reason = f"[Errno {err.errno}] {err.strerror}"
    if err.filename is None:
        return f"writing a file failed: {reason}"
    return f"cannot write {err.filename}: {reason}"


def _refused_by_rank_0() -> type[BaseException]:
    """What a rank other than 0 raises when rank 0 refused the run (printed by rank 0 only)."""
    from ..engine import RefusedByMainProcess

    return RefusedByMainProcess


def _one_line_warnings(command: str, show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints deformconv's own warnings (a skipped sample, a
    NaN output) as ``deformconv COMMAND: warning: ...`` lines, not with Python's file, line
    and source line; others' (torch's) as ``show`` does."""
    def show_warning(message: Warning | str, category: type[Warning], filename: str,
                     lineno: int, file: Any = None, line: str | None = None) -> None:
        if not Path(filename).resolve().is_relative_to(PACKAGE_DIR):
            show(message, category, filename, lineno, file, line)
            return
        text = " ".join(str(message).split())
        print(f"deformconv {command}: warning: {text}", file=file or sys.stderr)

    return show_warning


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed run, 2 bad input)."""
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(parser, commands, argv)
    with warnings.catch_warnings():  # restores showwarning for a caller of main()
        warnings.showwarning = _one_line_warnings(args.command, warnings.showwarning)
        return _run(parser, commands, argv, args)


def _run(parser: argparse.ArgumentParser, commands: dict[str, argparse.ArgumentParser],
         argv: list[str], args: argparse.Namespace) -> int:
    """``main`` once the command line parsed: runs the command, turning user errors into one
    line and an exit code."""
    try:
        sub = commands[args.command]
        from_file = apply_config_file(sub, args.config) if args.config else set()
        if from_file:
            args = _parse(parser, commands, argv)  # again: file values are now the defaults
        # What the user chose (file or flags), as opposed to defaults: resuming a run keeps
        # the checkpoint's settings except these.
        args.given_on_command_line = given_options(sub, argv)
        args.given = from_file | args.given_on_command_line
        if args.threads:
            set_threads(args.threads)
        return int(args.run(args) or 0)
    except KeyboardInterrupt as err:
        from ..engine.distributed import launched_rank

        # engine.TrainingStopped says where the run stopped and which signal stopped it;
        # under torchrun every rank stops there, and the first says so (as it prints the rest)
        if launched_rank() == 0:
            hint = ("--resume auto" if args.command == "train" and getattr(err, "checkpoint", None)
                    else getattr(args, "stopped_hint", lambda args: None)(args))
            again = f": continue with {hint}" if hint else ""
            print(f"deformconv {args.command}: {str(err) or 'interrupted'}{again}",
                  file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except ModuleNotFoundError as err:
        if extra_of(err.name) is None or os.environ.get(DEBUG_ENV):
            raise
        message = str(err) if isinstance(err, MissingExtraError) else install_hint(err.name or "")
        print(f"deformconv {args.command}: error: {message}", file=sys.stderr)
        return 2
    except _refused_by_rank_0():
        return 1  # under torchrun: rank 0 says why it refused the run, once
    except _user_errors() as err:
        if os.environ.get(DEBUG_ENV):
            raise
        from ..engine.distributed import reported_by_rank_0

        if reported_by_rank_0(err):
            return 2  # under torchrun every rank raised it (a setting, a NaN loss): rank 0 says it
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"deformconv {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        refused = _refused_write(err)
        if refused is None or os.environ.get(DEBUG_ENV):
            raise
        print(f"deformconv {args.command}: error: {_write_message(refused)}", file=sys.stderr)
        return 1
