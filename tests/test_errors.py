"""The message helpers of wmhkeras.errors: one line, and an exception cut at a limit."""

from wmhkeras.errors import exception_line, one_line


def test_one_line_turns_control_characters_and_runs_of_spaces_into_one_space():
    assert one_line("a\nb\r\n\tc   d\x1b[0m") == "a b c d [0m"
    assert one_line("  plain  ") == "plain"


def test_exception_line_names_the_class_and_cuts_at_the_limit():
    assert exception_line(ValueError("bad\nvalue")) == "ValueError: bad value"
    long = exception_line(OSError("x" * 300), limit=20)
    assert long == "OSError: " + "x" * 11 + "..." and len(long) == 23  # 9 + 11 = 20 characters, then the mark
    assert exception_line(KeyError("k"), limit=12) == "KeyError: 'k'"[:12] + "..."
    assert exception_line(KeyError("k"), limit=13) == "KeyError: 'k'"
