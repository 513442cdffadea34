"""The admin area in the browser and its twin for machines, the admin API: thin views
over the domain.
"""
