"""The token API (a CMS pushing articles, feedback-loop reports) and the OpenAPI document
of every JSON endpoint.
"""
