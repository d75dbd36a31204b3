"""Conversation service: direct and group conversations, their members and roles."""
