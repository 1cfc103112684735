"""`python -m projectx_pipeline` = the `projectx` command."""

import sys

from projectx_pipeline.cli import main

sys.exit(main())
