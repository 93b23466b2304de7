"""Built-in trackers plugins (registered in pyproject.toml under `selfreid.trackers`)."""
