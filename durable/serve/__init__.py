"""``durable serve``: the Durable Streams protocol over HTTP (Starlette on hypercorn's trio worker),
every stream in PostgreSQL through :mod:`durable.streams.store`. The only importer of the web stack."""

from .server import Server, serve

__all__ = ["Server", "serve"]
