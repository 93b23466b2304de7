"""Every stage on one machine (``selfreid run``) and the demo built on it (``selfreid demo``)."""
