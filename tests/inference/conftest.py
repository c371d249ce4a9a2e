"""Fixtures of the inference tests."""

import pytest

from tests.inference.helpers import tiny_model_file


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.keras")
