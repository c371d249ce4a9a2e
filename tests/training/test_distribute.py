"""Training beyond one device: MirroredStrategy over two logical CPUs, MultiWorkerMirroredStrategy on
two local processes. Each runs in fresh subprocesses: device layout and collective ops must be set up
before TensorFlow initialises."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.helpers import TINY, assert_best_is_the_best_of_the_log, read_log
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.run_folder import RunFolder

#: Train with the config file argv[1] into argv[2]; print the summary as JSON on a line of its own, after
#: :data:`SUMMARY` (TensorFlow may log after it: a worker whose peer has already exited logs a gRPC error
#: while it shuts down).
TRAIN = """
import json, sys
import tensorflow as tf
if sys.argv[3] == "two-cpus":  # before TensorFlow initialises
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from wmhkeras.config import load_config
from wmhkeras.training.trainer import train
result = train(load_config(sys.argv[1]), sys.argv[2], verbose=2)
print("SUMMARY " + json.dumps(result.summary.to_dict()), flush=True)
"""


SUMMARY = "SUMMARY "


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=5, sites=1, seed=0).manifest


def write_config(path, manifest, distribution: str, epochs: int):
    path.write_text(yaml.safe_dump({
        **TINY,
        "data": {**TINY["data"], "path": str(manifest)},
        "model": {**TINY["model"], "arch": "unet"},
        "train": {**TINY["train"], "epochs": epochs, "distribution": distribution},
    }))
    return path


def launch(config, run_dir, mode: str, tf_config: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(config), str(run_dir), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"timed out:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-4000:]
    lines = [line for line in output.splitlines() if line.startswith(SUMMARY)]
    assert len(lines) == 1, output[-4000:]
    return json.loads(lines[0][len(SUMMARY):])


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus(tmp_path, manifest):
    config = write_config(tmp_path / "cfg.yaml", manifest, "mirrored", epochs=2)
    summary = finish(launch(config, tmp_path / "run", "two-cpus"))
    assert summary["replicas"] == 2 and summary["epochs"] == 2 and summary["global_batch_size"] == 4
    run = RunFolder(tmp_path / "run")
    assert [r["epoch"] for r in read_log(run.log)] == ["0", "1"]
    assert_best_is_the_best_of_the_log(run)
    assert json.loads(run.state.read_text())["iterations"] == 2 * 3  # 3 steps of the global batch per epoch


@pytest.mark.slow
def test_multi_worker_on_two_local_processes(tmp_path, manifest):
    config = write_config(tmp_path / "cfg.yaml", manifest, "multi_worker", epochs=1)
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    procs = [launch(config, tmp_path / "run", "one-cpu", {"cluster": cluster, "task": {"type": "worker", "index": i}})
             for i in range(2)]
    try:
        summaries = [finish(p) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [s["replicas"] for s in summaries] == [2, 2]
    assert [s["epochs"] for s in summaries] == [1, 1]
    # Worker 0 (the chief) writes the run folder; the epoch logs are the same on both workers.
    assert summaries[0]["run_dir"] == str((tmp_path / "run").resolve())
    assert summaries[0]["last_epoch_logs"] == pytest.approx(summaries[1]["last_epoch_logs"])
    run = RunFolder(tmp_path / "run")
    assert json.loads(run.summary.read_text())["epochs"] == 1 and json.loads(run.state.read_text())["iterations"] == 3
    assert [r["epoch"] for r in read_log(run.log)] == ["0"]
    assert_best_is_the_best_of_the_log(run)
    # the chief's summary is the run folder's, its epoch logs the last row of log.csv
    assert summaries[0]["best_val_dice"] == json.loads(run.summary.read_text())["best_val_dice"]
    assert float(read_log(run.log)[-1]["val_dice"]) == pytest.approx(summaries[0]["last_epoch_logs"]["val_dice"])
    assert {p.name for p in tmp_path.iterdir()} == {"cfg.yaml", "run"}
    assert not Path(summaries[1]["run_dir"]).exists()  # the other worker's scratch folder is removed
