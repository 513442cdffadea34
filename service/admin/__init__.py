"""Who steers hebdo: admin accounts and their sessions, API tokens, the audit log of
what every person and machine did, and what each role may see of a subscriber.
"""
