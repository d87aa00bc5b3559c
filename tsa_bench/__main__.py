import sys

from tsa_bench.cli import main

sys.exit(main())
