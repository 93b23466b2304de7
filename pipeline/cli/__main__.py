"""``python -m selfreid.pipeline.cli``: the same as the ``selfreid`` console script."""

from selfreid.pipeline.cli.app import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
