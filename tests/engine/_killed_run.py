"""Run a training program and signal it after a given iteration, like a preempted job.

    python _killed_run.py ITERATION[:SIGNAL[:RANK]] SCRIPT [ARGS...]
    python _killed_run.py ITERATION[:SIGNAL[:RANK]] -m MODULE [ARGS...]

runs SCRIPT (or ``python -m MODULE``) with ARGS in this process, every
``deformconv.engine.train`` call given an ``on_iteration_end`` hook that sends the process
SIGNAL (a name, default SIGKILL: no cleanup, no final checkpoint) once ITERATION is done
(after its checkpoint, if one is due); given RANK, only the process of that torchrun rank.
A SIGNAL written ``group-NAME`` goes to the whole process group, data-loading workers
included, as a scheduler sends it (start this program in a session of its own).
The resume tests run their programs through it, also under torchrun (whose parser would
take options here for its own, hence one positional argument).
"""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys

from deformconv import engine


def signal_after(iteration: int, signum: int, train, send=lambda s: os.kill(os.getpid(), s)):
    """``train`` with an ``on_iteration_end`` hook that ``send``s ``signum`` at ``iteration``."""

    @functools.wraps(train)
    def signalled(*args, on_iteration_end=None, **kwargs):
        def hook(done: int) -> None:
            if on_iteration_end is not None:
                on_iteration_end(done)
            if done == iteration:
                send(signum)

        return train(*args, on_iteration_end=hook, **kwargs)

    return signalled


def main(argv: list[str]) -> None:
    when, target, *rest = argv
    iteration, name, rank = [*when.split(":"), "", ""][:3]
    name = name or "SIGKILL"
    if rank in ("", os.environ.get("RANK", "0")):
        group = name.startswith("group-")
        engine.train = signal_after(
            int(iteration), signal.Signals[name.removeprefix("group-")], engine.train,
            **({"send": lambda s: os.killpg(os.getpgrp(), s)} if group else {}))
    if target == "-m":
        module, *rest = rest
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
