"""Test harness: helpers that start and reach the real backing servers for integration tests."""
