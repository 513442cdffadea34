"""Subscribers: their lifecycle (subscribe, confirm, unsubscribe, resubscribe), addresses,
the suppression list, confirmation mails, signed links, search, bulk actions, and CSV
import and export.
"""
