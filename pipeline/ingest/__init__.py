"""Ingest: cameras -> detector -> tracker -> crop policy -> the Redis pool (``selfreid ingest``)."""
