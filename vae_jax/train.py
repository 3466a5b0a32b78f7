"""Training: a pure, jitted train step and the loop around it (the imperative shell).

The whole training set lives on the devices (uint8, replicated); each epoch's order is a
permutation drawn on device from ``fold_in(DATA_ORDER, epoch)``, and the step slices its batch
out of it by ``state.step``. So the step takes no host data, the loop has no host syncs but one
per epoch (metrics), and the step is compiled once, ahead of time, before the first epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from tqdm import tqdm

from vae_jax import config as config_lib
from vae_jax import data as data_lib
from vae_jax import figures, objectives, parallel, rng
from vae_jax.checkpoints import Checkpointer
from vae_jax.evaluate import make_test_evaluator
from vae_jax.models import VAE, init_params, make_model
from vae_jax.reporting import MetricsWriter, is_writer
from vae_jax.workdir import Workdir

TRAIN_METRICS = ("loss", "recon", "kl")
NUM_FIGURE_IMAGES = 64


class TrainState(NamedTuple):
    """Everything a step changes, plus the run's root key (constant, saved for provenance)."""

    step: jax.Array  # int32 []: steps taken so far
    params: Any
    opt_state: Any
    rng: jax.Array  # uint32 key data of rng.root_key(seed)

    @property
    def root(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adam(config.train.learning_rate)


def init_state(
    config: ml_collections.ConfigDict,
    model: VAE,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, ...],
) -> TrainState:
    root = rng.root_key(config.seed)
    params = init_params(model, rng.stream(root, rng.Stream.INIT), image_shape)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(root))


def abstract_state(
    config: ml_collections.ConfigDict, image_shape: tuple[int, ...], mesh: Mesh
) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, without computing it."""
    model = make_model(config.model, image_shape)
    shapes = jax.eval_shape(lambda: init_state(config, model, make_optimizer(config), image_shape))
    repl = parallel.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def restore_run(
    workdir: str | Path, step: int | None = None, mesh: Mesh | None = None
) -> tuple[ml_collections.ConfigDict, VAE, TrainState, dict]:
    """``(config, model, state, meta)`` of the run in ``workdir``: its latest checkpoint, or
    ``step``. Raises :class:`ConfigError` if there is none."""
    run = Workdir(Path(workdir))
    saved = run.saved_config()
    if saved is None:
        raise config_lib.ConfigError(f"{run.path} holds no vae_jax run (no config.json)")
    config = config_lib.from_json_dict(saved)
    if not run.checkpoints.is_dir():
        raise config_lib.ConfigError(f"{run.path} has no checkpoint yet")
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise config_lib.ConfigError(f"{run.path} has no checkpoint yet")
        image_shape = tuple(checkpointer.restore_meta(step)["image_shape"])
        like = abstract_state(config, image_shape, mesh or parallel.make_mesh())
        state, meta = checkpointer.restore(step, like)
    finally:
        checkpointer.close()
    return config, make_model(config.model, image_shape), state, meta


def make_train_step(
    model: VAE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    mesh: Mesh,
) -> Callable:
    """``(state, sums, images, perm) -> (state, sums + [loss, recon, kl])``, pure.

    ``images``: the uint8 training set; ``perm``: this epoch's permutation of it. The step's
    batch is ``images[perm[i*B:(i+1)*B]]`` with ``i = state.step % steps_per_epoch``, sharded
    over the devices. Noise (and dynamic binarization) use ``fold_in(TRAIN, state.step)``.
    """
    batch_size = config.train.batch_size
    dynamic = config.data.binarize == "dynamic"
    batch = parallel.batch_sharding(mesh)

    def step(state: TrainState, sums: jax.Array, images: jax.Array, perm: jax.Array):
        offset = (state.step % steps_per_epoch) * batch_size
        idx = jax.lax.with_sharding_constraint(
            jax.lax.dynamic_slice_in_dim(perm, offset, batch_size), batch
        )
        x = data_lib.to_float(images[idx])
        key = jax.random.fold_in(rng.stream(state.root, rng.Stream.TRAIN), state.step)
        noise_key, binarize_key = jax.random.split(key)
        if dynamic:
            x = data_lib.dynamic_binarize(binarize_key, x)

        def loss_fn(params):
            return objectives.training_loss(model, params, x, noise_key, config.model)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(state.step + 1, params, opt_state, state.rng), sums + metrics

    return step


def epoch_permutation(root: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
    return jax.random.permutation(
        jax.random.fold_in(rng.stream(root, rng.Stream.DATA_ORDER), epoch), n
    )


def make_figure_fn(model: VAE) -> Callable:
    """``(params, images_u8, z) -> (reconstructions, samples)``, decoder means in [0, 1].

    Reconstructions decode the posterior mean of each image (no noise), samples decode the
    given latents, so grids of different epochs are directly comparable.
    """

    @jax.jit
    def fn(params, images_u8, z):
        variables = {"params": params}
        mean, _ = model.apply(variables, data_lib.to_float(images_u8), method=VAE.encode)
        recon = objectives.decoder_mean(model.apply(variables, mean, method=VAE.decode))
        samples = objectives.decoder_mean(model.apply(variables, z, method=VAE.decode))
        return recon, samples

    return fn


def _format_epoch(record: dict, num_epochs: int) -> str:
    return (
        f"epoch {record['epoch']:2d}/{num_epochs}  "
        f"train loss {record['train_loss_nats']:.2f} "
        f"(recon {record['train_recon_nats']:.2f}, KL {record['train_kl_nats']:.2f})  "
        f"test -ELBO {record['test_neg_elbo_nats']:.2f}  "
        f"[{record['train_seconds']:.1f} s, {record['images_per_sec']:.0f} img/s]"
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    dataset: data_lib.Dataset | None = None,
    name: str = "",
) -> list[dict]:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint); return the history.

    The history is one record per epoch (the lines of ``metrics.jsonl``), all losses in nats
    per image. Bad input raises :class:`ConfigError` or :class:`DataError` before anything is
    written.
    """
    config_lib.validate(config)
    mesh = parallel.make_mesh()
    n_devices = mesh.devices.size
    parallel.check_divisible(config.train.batch_size, mesh, "train.batch_size")
    parallel.check_divisible(config.eval.batch_size, mesh, "eval.batch_size")
    run = Workdir(Path(workdir))
    run.check(config)
    done = _finished_history(run, config)
    if done is not None:
        print(f"Run in {run.path} is finished ({len(done)} epochs); nothing to do.")
        return done
    if dataset is None:
        dataset = data_lib.load_dataset(config.data)
    try:
        model = make_model(config.model, dataset.image_shape)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None

    # --- nothing has been written before this line ----------------------------------------
    run.create(config)
    tx = make_optimizer(config)
    batch_size, num_epochs = config.train.batch_size, config.train.num_epochs
    n_train = len(dataset.train_images)
    steps_per_epoch = n_train // batch_size
    repl = parallel.replicated(mesh)
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep)
    history: list[dict] = []
    latest = checkpointer.latest_step()
    if latest is None:
        state = jax.jit(
            lambda: init_state(config, model, tx, dataset.image_shape), out_shardings=repl
        )()
    else:
        state, meta = checkpointer.restore(
            latest, abstract_state(config, dataset.image_shape, mesh)
        )
        history = meta["history"]
    metrics_writer = MetricsWriter(run.path)
    metrics_writer.write(history)  # metrics.jsonl matches the checkpoint, after any crash
    start_epoch = len(history)

    platform = jax.devices()[0].platform
    print(
        f"vae_jax {name or 'run'}: {run.path} | {n_devices} {platform} device(s) | "
        f"{n_train} train / {len(dataset.test_images)} test images, batch {batch_size}, "
        f"{steps_per_epoch} steps/epoch"
        + (f" (last {n_train % batch_size} of each shuffle unused)" if n_train % batch_size else "")
        + (f" | resuming after epoch {start_epoch}" if start_epoch else "")
    )
    trainer = EpochTrainer(model, tx, config, mesh, dataset.train_images, state)
    outputs = EpochOutputs(model, config, mesh, dataset.test_images, state.root, run.figures, name)
    for epoch in range(start_epoch + 1, num_epochs + 1):  # 1-based, as in every message
        state, train, train_seconds = trainer.run_epoch(state, epoch)
        test, eval_seconds = outputs.evaluate_and_draw(state.params, epoch)
        record = {
            "epoch": epoch,
            "step": int(state.step),
            **{f"train_{k}_nats": v for k, v in train.items()},
            **{f"test_{k}_nats": v for k, v in test.items()},
            "train_seconds": train_seconds,
            "images_per_sec": steps_per_epoch * batch_size / train_seconds,
            "eval_seconds": eval_seconds,
            "compile_seconds": trainer.compile_seconds if epoch == start_epoch + 1 else 0.0,
            "devices": n_devices,
            "time": time.time(),
        }
        history.append(record)
        meta = {"epoch": epoch, "step": record["step"], "image_shape": list(dataset.image_shape)}
        checkpointer.save(record["step"], state, {**meta, "history": history})
        metrics_writer.write(history)
        tqdm.write(_format_epoch(record, num_epochs))

    checkpointer.close()
    metrics_writer.close()
    print(f"Done: {run.path} (figures in {run.figures}, metrics in {metrics_writer.path})")
    return history


class EpochTrainer:
    """The training set on the devices, the train step compiled once, and the epoch loop."""

    def __init__(
        self,
        model: VAE,
        tx: optax.GradientTransformation,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        train_images: np.ndarray,
        state: TrainState,
    ):
        self.batch_size = config.train.batch_size
        self.num_epochs = config.train.num_epochs
        self.log_every = config.train.log_every_steps
        n = len(train_images)
        self.steps_per_epoch = n // self.batch_size
        repl = parallel.replicated(mesh)
        self.images = jax.device_put(train_images, repl)
        self._permute = jax.jit(
            lambda key_data, epoch: epoch_permutation(jax.random.wrap_key_data(key_data), epoch, n),
            out_shardings=repl,
        )
        self._zeros = jax.device_put(jnp.zeros(len(TRAIN_METRICS), jnp.float32), repl)
        state_sharding = jax.tree.map(lambda _: repl, state)
        start = time.perf_counter()
        # Compiled ahead of time: a later call with other shapes or shardings fails loudly
        # instead of silently recompiling.
        self._step = (
            jax.jit(
                make_train_step(model, tx, config, self.steps_per_epoch, mesh),
                in_shardings=(state_sharding, repl, repl, repl),
                out_shardings=(state_sharding, repl),
                donate_argnums=0,
            )
            .lower(state, self._zeros, self.images, self._permute(state.rng, jnp.int32(0)))
            .compile()
        )
        self.compile_seconds = time.perf_counter() - start

    def run_epoch(self, state: TrainState, epoch: int) -> tuple[TrainState, dict, float]:
        """Train epoch ``epoch`` (1-based): the new state, mean train metrics, seconds."""
        perm = self._permute(state.rng, jnp.int32(epoch - 1))
        sums = self._zeros
        bar = tqdm(
            total=self.steps_per_epoch * self.batch_size,
            desc=f"epoch {epoch}/{self.num_epochs}",
            unit="img",
            unit_scale=True,
            leave=False,
            disable=not is_writer(),
            mininterval=0.5,
        )
        start = time.perf_counter()
        shown = None  # (sums, steps) of the previous log point, computed by now: no stall
        # Any implicit host<->device transfer in the loop is an error; the one read is explicit.
        with jax.transfer_guard("disallow"):
            for i in range(1, self.steps_per_epoch + 1):
                state, sums = self._step(state, sums, self.images, perm)
                if i % self.log_every == 0 or i == self.steps_per_epoch:
                    if shown is not None:
                        loss = float(jax.device_get(shown[0])[0]) / shown[1]
                        bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
                    bar.update(i * self.batch_size - bar.n)
                    shown = (sums, i)
        means = jax.device_get(sums) / self.steps_per_epoch  # the epoch's one host sync
        seconds = time.perf_counter() - start
        bar.close()
        return state, dict(zip(TRAIN_METRICS, means.tolist(), strict=True)), seconds


class EpochOutputs:
    """After each epoch: the test-set evaluation and the figures (process 0 draws)."""

    def __init__(
        self,
        model: VAE,
        config: ml_collections.ConfigDict,
        mesh: Mesh,
        test_images: np.ndarray,
        root: jax.Array,
        figures_dir: Path,
        name: str,
    ):
        self._evaluate = make_test_evaluator(model, config, test_images, mesh, root)
        self._draw = make_figure_fn(model)
        self._images = test_images[:NUM_FIGURE_IMAGES]
        self._z = jax.random.normal(
            rng.stream(root, rng.Stream.FIGURES), (len(self._images), config.model.latent_dim)
        )
        self._dir = figures_dir
        self._late_epoch = config.figures.late_epoch
        self._title = _figure_title(name, config)
        if is_writer():
            figures.save_grid(figures_dir / "originals.png", data_lib.to_float(self._images))

    def evaluate_and_draw(self, params: Any, epoch: int) -> tuple[dict, float]:
        start = time.perf_counter()
        test = self._evaluate(params)
        recon, samples = self._draw(params, self._images, self._z)
        if is_writer():
            figures.save_grid(figures.recon_path(self._dir, epoch), np.asarray(recon))
            figures.save_grid(figures.samples_path(self._dir, epoch), np.asarray(samples))
            late = min(self._late_epoch, epoch)
            figures.save_reconstructions_figure(self._dir, 1, late, title=self._title)
        return test, time.perf_counter() - start


def _finished_history(run: Workdir, config: ml_collections.ConfigDict) -> list[dict] | None:
    """The history of a run in ``run`` that has reached ``num_epochs``, else None."""
    if not run.checkpoints.is_dir():
        return None
    checkpointer = Checkpointer(run.checkpoints, config.checkpoint.max_to_keep)
    try:
        latest = checkpointer.latest_step()
        if latest is None:
            return None
        history = checkpointer.restore_meta(latest)["history"]
        return history if len(history) >= config.train.num_epochs else None
    finally:
        checkpointer.close()


def _figure_title(name: str, config: ml_collections.ConfigDict) -> str:
    m = config.model
    parts = [name] if name else []
    parts.append(f"{m.arch} VAE, z={m.latent_dim}, noise_scale={m.noise_scale:g}, {m.likelihood}")
    if config.data.binarize != "none":
        parts.append(f"{config.data.binarize} binarization")
    return " | ".join(parts)
