"""Test helpers shared by unit and e2e tests."""
