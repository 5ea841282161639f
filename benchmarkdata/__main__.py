"""Entry point: ``python -m benchmarkdata fetch|list`` (see :mod:`benchmarkdata.fetch`)."""
from benchmarkdata.fetch import main

raise SystemExit(main())
