"""`python -m jobpipe.cli`: what the installed `jobpipe` script runs (systemd's ExecStart= uses it)."""

import sys

from jobpipe.cli import main

sys.exit(main())
