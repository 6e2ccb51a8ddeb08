"""``durable console``: a live Textual TUI of queues, workers and instances.

It runs on Textual's asyncio loop and reads through the engine's own named statements
(:data:`durable.sql.Q`) with asyncpg used natively; the engine itself never imports this package.
"""
