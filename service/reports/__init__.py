"""Read models over several capabilities: the admin dashboard's figures and alerts. They
sit above the capabilities they read.
"""
