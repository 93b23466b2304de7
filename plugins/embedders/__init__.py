"""Built-in embedders plugins (registered in pyproject.toml under `selfreid.embedders`)."""
