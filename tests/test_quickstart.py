"""The README's offline quick start runs as written, only smaller; and what training prints while it runs.

The commands are read from the fenced block after QUICK_START_MARK in README.md and run in order in an empty
folder (holding links to the repository's scripts and models/), each one's sizes cut by SMALLER: the same
commands, a few pictures and steps instead of minutes of training."""

import io
import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from tests.helpers import ROOT
from training.progress import StepProgress

QUICK_START_MARK = "<!-- quick start: run by tests/test_quickstart.py -->"

# text of the README's block -> what the test runs instead (each must be in the block, so an edit to the README
# that drops one fails here rather than silently running the full size)
SMALLER = {
    "--count 1000": "--count 8",
    "--max-steps 500": "--max-steps 2",
    "000500": "000002",  # the last step, in the trained weights' file name
    "--log-images-every 250": "--log-images-every 2 --log-images 1",
}


def quick_start_commands():
    """The quick start's commands, as argument lists, continuation lines joined and comments dropped."""
    readme = (ROOT / "README.md").read_text()
    assert QUICK_START_MARK in readme, f"README.md has no {QUICK_START_MARK} before the quick start's block"
    block = re.search(r"```bash\n(.*?)```", readme[readme.index(QUICK_START_MARK):], re.S)
    assert block, "no ```bash block follows the quick start's mark in README.md"
    text = block.group(1)
    for full, small in SMALLER.items():
        assert full in text, f"the quick start no longer says {full!r}: update SMALLER in {__file__}"
        text = text.replace(full, small)
    commands = [shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines()]
    return [command for command in commands if command]


def test_the_readme_quick_start_runs_and_training_says_what_it_wrote(tmp_path):
    for name in ["models", *(p.name for p in ROOT.glob("*.py"))]:
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    outputs = {}
    for command in quick_start_commands():
        assert command[0] == "python", f"the quick start's commands start with python, not {command[0]}"
        done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)} failed:\n{done.stdout}\n{done.stderr}"
        outputs[command[1]] = done.stdout + done.stderr

    trained = outputs["train.py"]
    # where everything went, each on a line of its own, and the pauses named while they ran
    assert "step 2: checkpoint runs/quick/checkpoints/step-000002.ckpt" in trained
    assert "control weights runs/quick/checkpoints/control-000002.safetensors" in trained
    assert "step 2: images runs/quick/images/step-000002.png" in trained
    assert "saving checkpoint" in trained and "logging images" in trained
    # nothing that is not about this run
    assert "module(s) in eval mode" not in trained and "unexpected behavior" not in trained
    assert "Tip:" not in trained and "litlogger" not in trained

    image = np.asarray(Image.open(tmp_path / "runs/quick/square.png"))
    assert image.shape == (128, 128, 3)


def test_a_pause_stops_the_bars_clock():
    """A checkpoint's or an image log's time counts in neither the bar's rate nor its elapsed time."""
    progress = StepProgress()
    progress.bar = tqdm(total=10, file=io.StringIO(), smoothing=0.1, mininterval=0, miniters=1)  # every update
    progress.bar.update(1)
    with progress.paused("saving checkpoint"):
        assert progress.bar.desc == "saving checkpoint"
        time.sleep(0.5)
    progress.bar.update(1)
    assert progress.bar.desc == "training"
    assert progress.bar.format_dict["elapsed"] < 0.25
    assert progress.bar.format_dict["rate"] > 8  # steps of microseconds, not 2 steps over half a second
