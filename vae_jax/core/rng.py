"""Named random streams, all derived from one seed with ``fold_in``.

Nothing keeps a key in Python state: each use folds in what identifies it (the step, the
epoch, the eval chunk), so a run resumed at step N draws exactly the noise it would have drawn.
Noise for a global batch is drawn as one global array; with ``jax_threefry_partitionable``
(on by default since JAX 0.5) each device generates only its own rows, so devices draw
different noise and the values do not depend on how many devices share the batch.
"""

from __future__ import annotations

import enum

import jax


class Stream(enum.IntEnum):
    INIT = 0  # parameter initialization
    DATA_ORDER = 1  # fold_in(epoch): the epoch's permutation of the training set
    TRAIN = 2  # fold_in(step): reparameterization noise and dynamic binarization
    EVAL = 3  # fold_in(chunk): posterior samples of the test-set evaluation
    FIGURES = 4  # the fixed latents of the sample grids
    IWAE = 5  # fold_in(image index), fold_in(sample index): importance samples


def root_key(seed: int) -> jax.Array:
    """The run's root key (a typed threefry key)."""
    return jax.random.key(seed)


def stream(root: jax.Array, which: Stream) -> jax.Array:
    return jax.random.fold_in(root, int(which))
