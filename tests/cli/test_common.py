"""What the commands share: log levels (progress lines by default, TensorFlow's messages only with -vv),
progress in a log file, and TensorFlow's thread pools (--threads)."""

import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, tiny_model_file, write_nifti
from wmhkeras.cli import common

#: A line TensorFlow's C++ code writes: absl's start-up notice, or a glog-style record (I0000 00:00:...).
TF_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d:\d\d)", re.M)


@pytest.fixture
def restore_loggers():
    names = [*common.PROGRESS_LOGGERS, *common.TENSORFLOW_LOGGERS, "wmhkeras.data.splits"]
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_tensorflow_messages_are_hidden_unless_vv(monkeypatch, restore_loggers):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    common.configure_logging(0)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert logging.getLogger("absl").level == logging.getLogger("tensorflow").level == logging.ERROR
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    common.configure_logging(1)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    common.configure_logging(2)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert logging.getLogger("absl").level == logging.getLogger("tensorflow").level == logging.NOTSET
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own choice stands without -vv
    common.configure_logging(0)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


def test_progress_lines_show_at_the_default_level(caplog, restore_loggers):
    common.configure_logging(0)
    logging.getLogger("wmhkeras.training.cohort").info("checked 3 of 30 subjects")
    logging.getLogger("wmhkeras.experiment.arms").info("arm 1/4 dice: trained in 10 s")
    logging.getLogger("wmhkeras.data.splits").info("not progress")
    assert [r.getMessage() for r in caplog.records] == ["checked 3 of 30 subjects", "arm 1/4 dice: trained in 10 s"]


def test_every_progress_logger_is_a_module():
    import importlib.util

    for name in common.PROGRESS_LOGGERS:
        assert importlib.util.find_spec(name) is not None, name


def test_progress_in_a_log_file_is_one_line_per_item(capsys):
    wrap = common.progress_bar("subject")  # stderr is not a terminal under pytest
    assert list(wrap(iter("abc"), total=3)) == ["a", "b", "c"]
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["subjects: 1/3", "subjects: 2/3", "subjects: 3/3"]


def test_threads_set_both_pools_before_tensorflow_works():
    code = ("from wmhkeras.cli.common import start_tensorflow\n"
            "start_tensorflow(3)\n"
            "import tensorflow as tf\n"
            "tf.reduce_sum(tf.ones(4)).numpy()\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["3", "2"]
    assert common.inter_op_threads(1) == 1 and common.inter_op_threads(16) == 2


@pytest.mark.slow
def test_vv_shows_tensorflows_start_up_lines_and_the_default_hides_them(tmp_path):
    model = tiny_model_file(tmp_path / "tiny.keras")
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.eye(4))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    stderr = {}
    for flags in ((), ("-vv",)):
        out = tmp_path / f"out{len(flags)}"
        cmd = [sys.executable, "-m", "wmhkeras.cli.main", *flags, "segment", str(model), str(flair), "--out", str(out),
               "--threads", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        stderr[flags] = proc.stderr
    assert not TF_LINE.search(stderr[()]), stderr[()]
    assert "subjects: 1/1" in stderr[()]  # the progress line of a log file
    assert TF_LINE.search(stderr[("-vv",)]), stderr[("-vv",)]
