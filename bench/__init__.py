"""`python -m bench`: the end-to-end benchmark of the IDT pipeline (`make bench`).

A synthetic national log (a simulated base year, scaled by cloning claims) is
replayed through the full stack (embedded Redis, the four services as uvicorn
processes, SQLite or PostgreSQL); the machine's own limit is measured on the same
Redis with raw redis-py calls; the publish-to-alert latency is measured at a
steady 1,000 events/s; the numbers go to `bench/results.md`.

A development tool run from the repository (`python -m bench --help`); not part of
the installed wheel.
"""
