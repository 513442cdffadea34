"""The `hebdo` command: thin command groups over the domain."""
