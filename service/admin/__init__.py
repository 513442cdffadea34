"""Who steers hebdo: admin accounts and their sessions, API tokens, and the audit log of
what every person and machine did.
"""
