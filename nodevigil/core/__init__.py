"""The kernel: clock, errors, durations, event bus, configuration; imports nothing else of ours."""
