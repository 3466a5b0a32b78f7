"""The functional core: models, the CPU-fast convolutions, the objective and the pure train
step. Plain values in, arrays out; nothing here reads a config or touches a file."""
