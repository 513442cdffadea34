"""Subscribers: their lifecycle (subscribe, confirm, unsubscribe, resubscribe), addresses,
the suppression list, confirmation mails, signed links, search, bulk actions, CSV
import and export, and the reader's own preferences (topics, language, pause, address).
"""
