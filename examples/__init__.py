"""Example machines, importable from the repository root (``durable worker examples.checkout``)."""
