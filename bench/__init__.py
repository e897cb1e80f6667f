"""Issue 5's benchmark (not a test): ``python -m bench.run``; see README, "Performance"."""
