"""The benchmark (not a test): ``python -m bench.run``, a scenario a module in
``bench.scenarios``; see README, "Performance"."""
