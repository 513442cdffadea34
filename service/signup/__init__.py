"""What a sign-up goes through before it becomes a subscriber: the defences against bots
and the form's rate limits.
"""
