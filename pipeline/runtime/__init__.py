"""What every stage runs on: Redis connections, the pool factory, status, metrics, signals, doctor."""
