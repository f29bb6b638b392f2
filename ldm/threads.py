"""How many CPU threads torch computes on: one policy for every entry point (apps, generate.py, train.py's
sampling, the benches), so that an image made in one reproduces bit for bit in another.

All cores but one by default. Torch's threads wait for each other at every operation; when one of them shares
its core with the web server, a data loader or any other busy process, all of them wait on it (on 2 busy cores
a 128 px image took 40 s on 2 threads and 10 s on 1). The count also changes how reductions are split, so the
last bit of a result: it is saved with every image and restored by `--reproduce`.
"""

import os

import torch

THREADS_ENV = "CONTROLNET_THREADS"  # overrides the default for every entry point


def cores():
    """The cores this process may run on (a container's or a CPU set's, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads():
    """The environment's CONTROLNET_THREADS, else all cores but one (at least one)."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={value!r} is not a whole number of threads") from None
        if count < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: give at least 1 thread")
        return count
    return max(1, cores() - 1)


def use_threads(requested=None):
    """Compute on `requested` threads (None: the default policy); returns the count in force."""
    count = int(requested) if requested is not None else default_threads()
    if count < 1:
        raise ValueError(f"--threads {requested}: give at least 1 thread")
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def add_threads_argument(parser, default=None):
    parser.add_argument("--threads", type=int, default=default,
                        help=f"CPU threads for the model (default: ${THREADS_ENV}, else all cores but one)")
