"""Training on two machines, played by two local processes: ``python -m seglab run --only 03`` under TF_CONFIG."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import nbformat
import pytest

from conftest import REPO, tiny_config
from seglab import class_weights, data_loading
from seglab.machine import is_chief
from seglab.records import TrainingRecord
from seglab.rundir import RunDir

TINY = ["data.demo.num_images=8", "data.demo.image_size=32", "data.image_size=32", "model.architectures=[unet]",
        "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=2", "data.augment=none"]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _files(root):
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _start(index, ports, run_dir, log):
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    sets = [f"--set={o}" for o in (*TINY, "train.strategy=multi_worker")]
    with open(log, "w") as out:  # files, not pipes: nothing blocks on a full pipe while the other process is awaited
        return subprocess.Popen([sys.executable, "-m", "seglab", "run", "--config", "configs/demo.yaml", "--run-dir",
                                 str(run_dir), "--only", "03", *sets], cwd=REPO, env=env, stdout=out, stderr=out)


def _wait(processes, timeout=600):
    """Until both end; one that fails stops the other, which would otherwise wait for its peer until the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        codes = [p.poll() for p in processes]
        if None not in codes or any(codes):  # both ended, or one failed
            break
        time.sleep(0.5)
    for process in processes:
        process.kill()
        process.wait()


def test_two_workers_train_together_and_only_the_chief_writes(tmp_path):
    cfg = tiny_config(tmp_path, *TINY)
    run = RunDir(cfg.run_dir)
    data_loading.prepare_dataset(cfg, run)
    class_weights.write_class_weights(run, cfg)
    # The worker gets its own copy of the run folder (a shared folder in real use), so that anything it wrote shows.
    worker_view = tmp_path / "worker_view"
    shutil.copytree(run.root, worker_view)
    before = _files(worker_view)

    ports, logs = _free_ports(2), [tmp_path / "chief.log", tmp_path / "worker.log"]
    processes = [_start(0, ports, run.root, logs[0]), _start(1, ports, worker_view, logs[1])]
    _wait(processes)
    chief_out, worker_out = (log.read_text() for log in logs)
    assert [p.returncode for p in processes] == [0, 0], chief_out[-3000:] + worker_out[-3000:]

    # Both took part: each saw two replicas and ran the two steps of the epoch.
    assert "worker 1 of a cluster of 2 replicas" in worker_out and "2/2 - " in worker_out, worker_out
    executed = nbformat.read(run.path("notebooks", "03_training.ipynb"), as_version=4)
    chief_log = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "replicas: 2" in chief_log and "2/2 - " in chief_log, chief_log
    summary = run.read(TrainingRecord).models["unet"]
    assert summary.replicas == 2 and summary.global_batch_size == 4

    # One model and one record, from the chief; the worker left nothing behind.
    assert sorted(p.name for p in run.path("models").iterdir()) == ["unet.json", "unet.keras"]
    assert set(run.require("training").outputs) >= {"training.json", "models/unet.keras", "models/unet.json",
                                                     "history/unet.json"}
    assert _files(worker_view) == before
    assert not [p for p in [*run.root.rglob("*"), *worker_view.rglob("*")] if "workertemp" in p.name]


TWO = ["127.0.0.1:1", "127.0.0.1:2"]


@pytest.mark.parametrize("tf_config, chief", [
    (None, True),  # no cluster: one process, which writes everything
    ({"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 0}}, True),
    ({"cluster": {"worker": TWO}, "task": {"type": "worker", "index": 1}}, False),
    ({"cluster": {"chief": TWO[:1], "worker": TWO[1:]}, "task": {"type": "chief", "index": 0}}, True),
    ({"cluster": {"chief": TWO[:1], "worker": TWO[1:]}, "task": {"type": "worker", "index": 0}}, False),
])
def test_tf_config_names_the_chief_as_tensorflow_does(monkeypatch, tf_config, chief):
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    else:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() is chief
