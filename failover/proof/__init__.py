"""Proof that traffic moved: after an action, watch the load balancer until traffic follows."""
