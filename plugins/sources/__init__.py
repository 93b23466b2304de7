"""Built-in sources plugins (registered in pyproject.toml under `selfreid.sources`)."""
