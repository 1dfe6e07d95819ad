"""``nodevigil demo``: a small world on loopback and a failover story played through it."""
