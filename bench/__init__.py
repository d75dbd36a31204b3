"""Courier's load tool: an asyncio WebSocket client that drives a loopback Courier and measures it."""
