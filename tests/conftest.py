import os
import tempfile

# Tests never reach the model hub: a missing file must fail at once, not after the hub client's retries.
os.environ["HF_HUB_OFFLINE"] = "1"
# Gradio keeps uploads and results in a cache named by their content; the test processes (pytest-xdist
# workers) upload the same pictures, and two processes writing one cache file let a reader get it half written.
os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="gradio-tests-")

import pytest

from tests.helpers import TINY_V15, TINY_V21, tiny_model


@pytest.fixture
def tiny_v15():
    return tiny_model(TINY_V15)


@pytest.fixture
def tiny_v21():
    return tiny_model(TINY_V21)


SUBFOLDERS = {"upernet": "upernet-convnext-small", "dpt": "dpt-large"}  # transformers folders, named as on the hub


@pytest.fixture(scope="session")
def annotator_weights(tmp_path_factory):
    """A folder of random annotator weights; `annotator_weights(name)` writes one detector's files on demand."""
    from tests.annotator_weights import WRITERS

    folder = tmp_path_factory.mktemp("annotator_ckpts")
    written = set()

    def ensure(*names):
        for name in names:
            if name not in written:
                WRITERS[name](folder / SUBFOLDERS[name] if name in SUBFOLDERS else folder)
                written.add(name)
        return folder

    return ensure
