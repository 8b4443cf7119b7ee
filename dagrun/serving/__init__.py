"""Serving connections, for the REST API and the worker servers alike: the lobby that holds connections
until they authenticate, and how listening fails."""
