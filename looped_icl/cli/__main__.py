"""``python -m looped_icl.cli SUBCOMMAND ...``: the ``looped-icl`` command."""

from looped_icl.cli import main

main()
