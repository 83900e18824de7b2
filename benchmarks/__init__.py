"""scaleplan's benchmarks: speed and accuracy beside the tools people use today.

Scripts, not an installed package: run ``python -m benchmarks.run`` from the repository root.
"""
