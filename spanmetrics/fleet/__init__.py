"""The worker fleet: Kafka in, checkpoints in the state store, metrics out."""
