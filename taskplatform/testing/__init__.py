"""Helpers for tests of task types and of the platform itself: no broker needed."""
