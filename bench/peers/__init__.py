"""Peer engines, each driven by a module run in its own process: ``python -m durable.bench.peers.<name>``."""
