"""``durable serve``: the Durable Streams protocol over HTTP, every stream in PostgreSQL through
:mod:`durable.streams.store`. Appends, catch-up reads and HEAD are answered by the HTTP front (uvicorn on
its own asyncio loop and thread, :mod:`durable.serve.front`); everything else by the Starlette app on
trio (:mod:`durable.serve.server`), to which the front hands it. ``DURABLE_SERVE_HTTP=hypercorn`` runs
everything on trio under hypercorn. The only importer of the web stack."""

from .server import Server, serve

__all__ = ["Server", "serve"]
