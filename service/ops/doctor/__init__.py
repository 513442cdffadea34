"""`hebdo doctor`: check a deployment end to end and say, for each part, what is wrong and
how to fix it. One module per check; `run` runs them all, each bounded in time.
"""
