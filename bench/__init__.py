"""Benchmarks: durable against pgqueuer, procrastinate, oban and DBOS, and against PostgreSQL's own
commit limit, in one run on one server. ``python -m bench --help`` (or ``durable bench``)."""
