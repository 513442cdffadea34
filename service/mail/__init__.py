"""The one mailer: messages as they go on the wire (headers, DKIM) and the transports that
carry them (SMTP, local capture), and the look every mail shares (brand: masthead, colours).
"""
