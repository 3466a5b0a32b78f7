"""Image datasets: TFDS or arrays of your own, uint8, subsets and binarization."""
