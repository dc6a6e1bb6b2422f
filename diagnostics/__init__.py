"""The diagnostics plugin: gradient magnitude imbalance, gate degradation, counterfactual tests,
verdicts. It only listens to the lifecycle hooks (see plugin.py); metrics.py and verdict.py are
pure functions that any finished run's numbers can be fed to again."""
