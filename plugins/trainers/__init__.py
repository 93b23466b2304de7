"""Built-in trainers plugins (registered in pyproject.toml under `selfreid.trainers`)."""
