"""`python -m service.cli`: the `hebdo` command without its console script."""

from service.cli.main import main

main()
