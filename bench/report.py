"""The two lines every benchmark opens with: the command that ran it and the machine it ran on."""

import os
import platform
import sys
from pathlib import Path


def print_command():
    print(f"command: python bench/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".rstrip())


def print_machine(*details):
    """`machine: <cpu>, <n> cores, <details...>`."""
    print(", ".join([f"machine: {platform.processor() or platform.machine()}", f"{os.cpu_count()} cores", *details]))


def torch_details():
    """torch's version and its thread count, as the timing benchmarks report them."""
    import torch

    return f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"
