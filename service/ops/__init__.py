"""Running and checking a deployment: `hebdo run`'s supervisor, readiness, the doctor
and the hourly housekeeping.
"""
