"""Training SPEC's two stages: the run's config, the model's preparation, the loop and its checkpoints."""
