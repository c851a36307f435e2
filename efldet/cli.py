"""The `efldet` command. Each subcommand is a pair of functions here: `_add_<name>` (arguments) and
`_run_<name>` (work). Exit codes: 0 success, 2 bad usage / config / input, 1 runtime failure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from efldet.errors import UserInputError


# ----------------------------------------------------------------------------------------------- plot-loss
def _add_plot_loss(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot-loss",
        help="draw the paper's Fig. 3 (a)/(b) and Fig. 5 (EFL loss and derivative curves) as PNG files",
        description="Draw EFL loss curves vs x_t without / with the weighting factor (Fig. 3 a, b) and the "
        "derivative of Eq. 6 (Fig. 5) for several focusing factors gamma_j.",
    )
    p.add_argument("--out", required=True, help="output directory for the PNG files (created if absent)")
    p.add_argument("--gamma-b", type=float, default=2.0, help="base focusing factor gamma_b (default 2)")
    p.add_argument(
        "--gammas", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0, 10.0],
        help="focusing factors gamma_j to draw, one curve each (default 2 4 6 8 10)",
    )


def _run_plot_loss(args: argparse.Namespace) -> int:
    from efldet.losses.plots import plot_loss_figures

    paths = plot_loss_figures(args.out, gamma_b=args.gamma_b, gammas=args.gammas)
    for path in paths:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------- main
_COMMANDS = {
    "plot-loss": (_add_plot_loss, _run_plot_loss),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efldet",
        description="One-stage long-tailed object detection with the Equalized Focal Loss.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _, run = _COMMANDS[args.command]
    try:
        return run(args)
    except UserInputError as err:
        print(f"efldet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"efldet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
