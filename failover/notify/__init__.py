"""Notifications: the durable outbox, its dispatcher, and the transports that deliver."""
