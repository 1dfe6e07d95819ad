"""Tests of the HTTP API under hostile input: its document, fuzzing, authorization, limits."""
