"""Durable state behind the domains' ports: the backends, and the state directory's files."""
