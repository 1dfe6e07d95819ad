"""PostgreSQL: the shared state of a cluster of nodevigil hosts (psycopg 3, psycopg-pool)."""
