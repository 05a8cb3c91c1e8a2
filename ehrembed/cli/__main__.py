"""``python -m ehrembed.cli``: the same as the ``ehrembed`` command."""

from ehrembed.cli import main

main()
