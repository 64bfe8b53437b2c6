"""ember's benchmark suite: the same workloads on ember and on Ray (see README.md)."""
