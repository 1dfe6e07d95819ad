"""The embedded backend: every store in SQLite files under ``state_dir``; all SQL lives here."""
