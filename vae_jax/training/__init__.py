"""The imperative shell of training: one run (or several trained together) from check to
evaluation, the epoch loop, and stopping on signals."""
