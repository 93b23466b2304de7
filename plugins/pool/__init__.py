"""Built-in pool plugins (registered in pyproject.toml under `selfreid.pools`)."""
