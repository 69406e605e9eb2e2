"""The sending side of webhooks: secrets at rest, signatures, SSRF-safe HTTP, the delivery loop."""
