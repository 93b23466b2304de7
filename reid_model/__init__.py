"""The science: model, memory banks, selection, loss, trainer, evaluation and export.

Installed as ``selfreid.reid_model``. It imports nothing from Redis, video I/O,
``selfreid.pipeline`` or ``selfreid.plugins`` and is testable on tensors alone.
"""
