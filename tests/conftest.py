import pytest

from tests.helpers import TINY_V15, TINY_V21, tiny_model


@pytest.fixture
def tiny_v15():
    return tiny_model(TINY_V15)


@pytest.fixture
def tiny_v21():
    return tiny_model(TINY_V21)
