"""Shared runtime for the services: settings, storage, the safe consumer, the outbox."""
