"""Results: continual-learning metrics, the package stage (plots, report, bundle), the summary.
"""
