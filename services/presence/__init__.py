"""Presence service: who is online, per device with heartbeat expiry, and who wants to know."""
