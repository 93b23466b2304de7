"""Built-in matchers plugins (registered in pyproject.toml under `selfreid.indexes` and `selfreid.matchers`)."""
