"""Helpers shared by the generator tests: the tiny generator setting."""

TINY = {"input_shape": (32, 32, 1), "depth": 2, "base_filters": 4}
