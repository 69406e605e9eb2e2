"""Webhooks in the database: the outbox, endpoints and their policy, delivery leases."""
