"""Whether every replica holds the same model: a checksum of each variable, compared across the
replicas after every epoch of a multi-worker run.

Gradients are summed across replicas, so workers that form one cluster stay bit-identical.
Workers that do not (a worker whose TF_CONFIG leaves the others out trains alone) drift apart
without any error, and the chief's checkpoint then holds one worker's model only. Each worker
sums its own copies on the host (a graph over every variable took 11 s to trace) and one
all-gather of the sums per epoch finds a difference on the first epoch, naming the variables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from handray.core.errors import HandrayError


def checksums(values: np.ndarray) -> np.ndarray:
    """[2] int64 of one variable: the sum of its elements' bits read as integers, and that
    sum weighted by each element's position (both wrapping around). Integer sums are exact,
    so equal values give equal checksums on any replica; a change anywhere, or two elements
    swapped, changes them."""
    flat = np.asarray(values).reshape(-1)
    if flat.dtype.kind == "f":
        bits = flat.astype(np.float32).view(np.int32).astype(np.int64)
    else:
        bits = flat.astype(np.int64)
    position = np.arange(1, flat.size + 1, dtype=np.int64)
    with np.errstate(over="ignore"):
        return np.array([bits.sum(), (bits * position).sum()], np.int64)


def local_copies(strategy: tf.distribute.Strategy, variable) -> list[np.ndarray]:
    """The values of `variable` on each of this worker's replicas."""
    inner = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.asarray(copy) for copy in strategy.experimental_local_results(inner)]


def sync_checker(strategy: tf.distribute.Strategy, variables: Sequence) -> Callable[[int], int]:
    """A call for the end of each epoch that returns the number of replicas found holding the
    same `variables`, or raises naming those that differ."""
    variables = list(variables)

    @tf.function(autograph=False)
    def gather(per_replica) -> tf.Tensor:
        every = strategy.run(
            lambda sums: tf.distribute.get_replica_context().all_gather(sums[None], axis=0),
            args=(per_replica,),
        )
        return strategy.experimental_local_results(every)[0]

    def gathered(local: np.ndarray) -> tf.Tensor:
        """[replicas, variables, 2]: every replica's checksums, from this worker's [local
        replicas, variables, 2]."""
        per_replica = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(local[context.replica_id_in_sync_group % len(local)])
        )
        return gather(per_replica)

    def check(epoch: int) -> int:
        copies = [local_copies(strategy, variable) for variable in variables]
        local = np.stack([[checksums(c[r]) for c in copies] for r in range(len(copies[0]))])
        every = gathered(local).numpy()
        differing = (every != every[:1]).any(axis=(0, 2))
        if differing.any():
            pairs = zip(variables, differing, strict=True)
            names = [getattr(v, "path", v.name) for v, bad in pairs if bad]
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise HandrayError(
                f"after epoch {epoch} the workers' models differ ({len(names)} of "
                f"{len(variables)} variables: {shown}): the workers are not training together. "
                "Check that every worker's TF_CONFIG lists all of them (handray train sets it)"
            )
        return strategy.num_replicas_in_sync

    return check
