"""No recompilation after the first epoch: with ``jax.log_compiles`` on, a three-epoch run
compiles nothing once its first epoch (training, evaluation, figures, checkpoint) is done."""

import logging

import jax
from conftest import small_config, synthetic_dataset

from vae_jax.training import loop
from vae_jax.training.run import train_and_evaluate

EPOCH_END = "<epoch end>"


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.events: list[str] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.events.append(message.split()[1])


def test_no_compilation_after_the_first_epoch(tmp_path, monkeypatch):
    handler = _Compiles()
    format_epoch = loop.format_epoch

    def marked(record, num_epochs):  # called once per finished epoch, after its checkpoint
        handler.events.append(EPOCH_END)
        return format_epoch(record, num_epochs)

    monkeypatch.setattr(loop, "format_epoch", marked)
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            config = small_config({"train.num_epochs": 3})
            train_and_evaluate(config, tmp_path / "run", synthetic_dataset())
    finally:
        logger.removeHandler(handler)
    events = handler.events
    assert events.count(EPOCH_END) == 3
    first_epoch = events[: events.index(EPOCH_END)]
    assert "jit(step)" in first_epoch, first_epoch
    later = [e for e in events[events.index(EPOCH_END) :] if e != EPOCH_END]
    assert later == [], f"compiled after the first epoch: {later}"
