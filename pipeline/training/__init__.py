"""Self-training: the service that adapts the model on the pool, the gate, and the versioned registry."""
