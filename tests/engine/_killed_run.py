"""Run a training program and SIGKILL it after a given iteration, like a preempted job.

    python _killed_run.py ITERATION SCRIPT [ARGS...]
    python _killed_run.py ITERATION -m MODULE [ARGS...]

runs SCRIPT (or ``python -m MODULE``) with ARGS in this process, every
``deformconv.engine.train`` call given an ``on_iteration_end`` hook that kills the process
once ITERATION is done (after its checkpoint, if one is due): no cleanup, no final
checkpoint. The resume tests run their programs through it, also under torchrun.
"""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys

from deformconv import engine


def kill_after(iteration: int, train):
    """``train`` with an ``on_iteration_end`` hook that SIGKILLs the process at ``iteration``."""

    @functools.wraps(train)
    def killed(*args, on_iteration_end=None, **kwargs):
        def hook(done: int) -> None:
            if on_iteration_end is not None:
                on_iteration_end(done)
            if done == iteration:
                os.kill(os.getpid(), signal.SIGKILL)

        return train(*args, on_iteration_end=hook, **kwargs)

    return killed


def main(argv: list[str]) -> None:
    iteration, target, *args = argv
    engine.train = kill_after(int(iteration), engine.train)
    if target == "-m":
        module, *args = args
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *args]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
