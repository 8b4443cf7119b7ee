"""Transports for dagrun: each module holds an Executor (client side) and its worker side."""
