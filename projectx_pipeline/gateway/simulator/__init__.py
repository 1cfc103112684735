"""A local ProjectX Gateway (REST, market hub, fault injection) for tests and demos: see server.py."""
