"""``python -m durable.console ARGS`` = ``durable console ARGS`` (what ``durable console --web`` runs per
browser tab)."""

import sys

from durable.cli import main

main(["console", *sys.argv[1:]], prog_name="durable")
