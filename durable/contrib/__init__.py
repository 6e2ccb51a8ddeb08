"""Optional pieces outside the engine: they need packages the engine does not (``durable[serve]``'s httpx,
and anyio), and ``import durable`` never loads them.

- :mod:`durable.contrib.streams_client`: an HTTP client for Durable Streams (any server: ``durable serve``,
  the reference Node server, ...), with an exactly-once batching writer and a resuming reader.
"""
