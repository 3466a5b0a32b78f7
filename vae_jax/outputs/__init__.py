"""What a run writes: its workdir (layout, lock), checkpoints, metrics and plots."""
