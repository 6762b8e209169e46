"""TF_CONFIG for Ray Train's workers, as TensorFlow's own resolver reads it, and a run's trainer
that its controller can unpickle without importing TensorFlow."""

import json
import socket
import subprocess
import sys

import tensorflow as tf

from handray.core.network import address_with_free_port
from handray.train.worker_cluster import tf_config


def test_tensorflows_resolver_reads_the_cluster_and_each_workers_index(monkeypatch):
    addresses = ["10.0.0.1:2222", "10.0.0.2:3333", "[fe80::1]:4444"]
    for rank in range(len(addresses)):
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config(addresses, rank)))
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert resolver.cluster_spec().as_dict() == {"worker": addresses}
        assert (resolver.task_type, resolver.task_id) == ("worker", rank)


def test_the_address_names_this_node_and_a_port_free_on_it():
    host, _, port = address_with_free_port().rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("", int(port)))  # still free: nothing kept it
    socket.getaddrinfo(host.strip("[]"), int(port))  # an address, not a name to look up


def test_a_runs_trainer_unpickles_without_tensorflow(tmp_path):
    """What Ray Train's controller (and a Tune trial's driver) receive: the trainer's backend
    config and worker function, unpickled in a fresh interpreter."""
    code = f"""
import sys
from pathlib import Path
import ray.cloudpickle as pickle
from handray.config import load_config
from handray.train.resources import WorkerResources
from handray.train.trainer import build_trainer
trainer = build_trainer(load_config("tiny"), Path("."), weights=None,
    resources=WorkerResources(2), name="run", storage=Path({str(tmp_path)!r}))
pickle.loads(pickle.dumps((trainer.backend_config, trainer.train_loop_per_worker)))
print("tensorflow" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
