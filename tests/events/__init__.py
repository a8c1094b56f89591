"""Tests of the lifecycle events: external format, JSON Schema, bridge."""
