"""Adapters of the file service: metadata catalogs (SQL, memory) and object stores (local disk)."""
