"""Built-in detectors plugins (registered in pyproject.toml under `selfreid.detectors`)."""
