"""The weekly digest: articles in (feeds, CMS pushes), planning, editors' choices (the
lead story, the editor's note), rendering, click counts (no reader named), the issue's
lifecycle, delivery and the global send rate.
"""
