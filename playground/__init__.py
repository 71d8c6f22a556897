"""The toy world and the offline tiny base: FaST's embedded, CPU-sized stand-in for real data and models."""
