"""The weekly digest: articles in (feeds, CMS pushes), planning, editors' choices,
rendering, the issue's lifecycle, delivery and the global send rate.
"""
