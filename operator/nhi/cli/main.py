"""``nhi``: the user's command line for nhi-operator."""

from __future__ import annotations

import argparse
import sys

from nhi import __version__


def cmd_version(args: argparse.Namespace) -> int:
    print(f"nhi {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nhi", description="Inspect and operate nhi-operator's machine identities."
    )
    p.add_argument("--kubeconfig", help="path to a kubeconfig (default: $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context to use")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("version", help="print the version")
    v.set_defaults(func=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
