"""`python -m bench`: the bench suite (bench/suite.py). `python -m bench --help` lists the parts."""

import sys

from bench.suite import main

sys.exit(main())
