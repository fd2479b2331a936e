"""Stage two: the attention-LSTM head trained over the feature cache (feeding, the epoch loop,
resumable state, evaluation, checkpoints, the run's files). Never imports PIL or torchvision."""
