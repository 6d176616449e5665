"""The training loop, its learning-rate schedule, several processes under torchrun, and the run record."""
