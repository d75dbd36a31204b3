"""The identity service: users, password login, device sessions and rotating refresh tokens."""
