"""The data path, read top-down: sources -> detect -> track -> pool -> self-training service ->
export/registry -> embedder -> matcher. Installed as ``selfreid.pipeline``."""
