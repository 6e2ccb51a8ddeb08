"""Benchmarks: durable against pgqueuer, procrastinate, oban and DBOS, and against PostgreSQL's own
commit limit, in one run on one server. ``python -m durable.bench --help`` (or ``durable bench``)."""
