"""`python -m fim_lsp`: the same as the `fim-lsp` command."""

import sys

from fim_lsp.cli import main

sys.exit(main())
