"""Plain helpers for the tests (constants, harnesses, comparisons), laid out like the package.

conftest.py turns the ones that need a lifetime into fixtures; tests import the rest from here,
never from conftest."""
