"""The ``selfreid`` command line (``selfreid.pipeline.cli:main`` is the console script).

One module per command group (:mod:`.config`, :mod:`.ingest`, :mod:`.train`, :mod:`.models`,
:mod:`.serving`, :mod:`.run`) plus :mod:`.common`; :mod:`.app` registers them.
"""

from selfreid.pipeline.cli.app import app, main

__all__ = ["app", "main"]
