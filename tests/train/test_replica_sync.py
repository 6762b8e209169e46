"""The per-epoch check that every replica holds the same model: its checksums, and the check on
two real replicas (a MirroredStrategy over two logical CPUs, in a
process of its own, as TensorFlow fixes its devices when it starts)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from handray.train.replica_sync import checksums


def test_checksums_tell_a_one_bit_change_and_a_swap_apart():
    values = np.random.default_rng(0).normal(size=(3, 50, 7)).astype(np.float32)
    original = checksums(values).tolist()
    assert checksums(values.copy()).tolist() == original
    bits = values.reshape(-1).view(np.int32).astype(np.int64)
    assert original[0] == bits.sum()  # the bits as integers, summed exactly
    nudged = values.copy()
    nudged[1, 2, 3] = np.nextafter(nudged[1, 2, 3], np.float32(np.inf))  # one bit
    assert checksums(nudged).tolist() != original
    swapped = values.copy()
    swapped.reshape(-1)[[0, 1]] = swapped.reshape(-1)[[1, 0]]
    assert checksums(swapped).tolist()[0] == original[0]  # the same elements
    assert checksums(swapped).tolist() != original  # in other places
    steps = np.array(123456789012, np.int64)  # an optimizer's step count
    assert checksums(steps).tolist() == [123456789012, 123456789012]
    assert checksums(np.full(3, 2**62, np.int64)).dtype == np.int64  # wraps, never raises


TWO_REPLICAS = """
import json
import tensorflow as tf
(cpu,) = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from handray.core.errors import HandrayError
from handray.train.replica_sync import sync_checker

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    weights = tf.Variable(tf.random.normal([4, 3], seed=1), name="kernel")
    steps = tf.Variable(7, dtype=tf.int64, name="iterations")
    local = tf.Variable(  # one copy per replica, as a worker training alone holds its model
        tf.zeros([5]),
        name="alone",
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.SUM,
    )
result = {"in_sync": sync_checker(strategy, [weights, steps, local])(1)}

def drift():
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    local.assign(tf.fill([5], tf.cast(replica, tf.float32)))

strategy.run(tf.function(drift))
try:
    sync_checker(strategy, [weights, steps, local])(3)
except HandrayError as error:
    result["error"] = str(error)
print(json.dumps(result))
"""


@pytest.mark.slow  # a TensorFlow process of its own
def test_two_replicas_in_sync_pass_and_a_drifted_variable_is_named():
    done = subprocess.run(
        [sys.executable, "-c", TWO_REPLICAS], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["in_sync"] == 2
    message = result["error"]
    assert "after epoch 3" in message and "1 of 3 variables: alone" in message, message
    assert "TF_CONFIG" in message
