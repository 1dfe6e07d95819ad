"""The application: the daemon's wiring, API, command line and demo; nothing imports it."""
