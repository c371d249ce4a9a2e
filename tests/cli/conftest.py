"""Fixtures of the CLI tests."""

import pytest

from tests.inference.helpers import tiny_model_file


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny ``.keras`` model (FLAIR in), built once per test module."""
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.keras")
