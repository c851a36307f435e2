"""`python -m efldet ...` is the same as the `efldet` command."""

from efldet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
