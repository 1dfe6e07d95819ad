"""Replay: what a configuration would have done over the recorded probe history."""
