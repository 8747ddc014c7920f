import sys

from startprof.cli import main

sys.exit(main())
