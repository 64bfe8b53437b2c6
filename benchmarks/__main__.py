"""`python -m benchmarks`: run the benchmark CLI."""

from benchmarks.run import main

raise SystemExit(main())
