"""Training: the compiled step and epoch, populations, the learning-rate schedule, checkpoints, the run loop, its writers, metric names, stop signals."""
