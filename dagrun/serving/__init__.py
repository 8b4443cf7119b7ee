"""Serving connections, for the REST API and the worker servers alike: a server's lifecycle (`Server`), the
lobby that holds connections until they authenticate, and how listening fails."""
