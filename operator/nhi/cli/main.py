"""``nhi``: the user's command line for nhi-operator.

Commands: ``status``, ``renew``, ``revoke``, ``inspect secret``, ``history``, ``grant``,
``inventory``, ``report``, ``adopt``, ``rightsize``, ``version``.
See docs/cli.md. Every problem (no kubeconfig, not found, forbidden, unreachable API server)
is reported as one line on stderr with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nhi import __version__
from nhi.cli.errors import CliError

STRUCTURED = ("json", "yaml")


def cmd_version(args: argparse.Namespace) -> int:
    print(f"nhi {__version__}")
    return 0


# ------------------------------------------------------------------------------ running


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(args: argparse.Namespace, command: Callable[..., Awaitable[int]], *params: object) -> int:
    """Resolve the cluster and run ``command(api, namespace, *params)``.

    ``namespace`` is -n, else the kubeconfig context's, else ``default``; None with -A (all
    namespaces). Every failure becomes a :class:`CliError`.
    """
    import aiohttp

    from nhi.cli.context import resolve
    from nhi.k8s.client import Api, ApiError, Forbidden, NotFound

    target = resolve(args.kubeconfig, args.context)
    server = target.connection.server
    namespace: str | None = args.namespace or target.namespace
    if getattr(args, "all_namespaces", False):
        namespace = None

    async def go() -> int:
        async with Api(target.connection, limit=8) as api:
            return await command(api, namespace, *params)

    try:
        return asyncio.run(go())
    except NotFound as err:
        raise CliError(f"not found: {_one_line(err.message) or err.reason}") from None
    except Forbidden as err:
        raise CliError(f"forbidden: {_one_line(err.message) or err.reason}") from None
    except ApiError as err:
        if err.status == 401:
            raise CliError(
                f"unauthorized: the API server at {server} rejected the kubeconfig's credentials"
            ) from None
        raise CliError(
            f"the API server refused the request ({err.status} {err.reason}): "
            f"{_one_line(err.message)}"
        ) from None
    except TimeoutError:  # before OSError, its base class
        raise CliError(f"timed out talking to the API server at {server}") from None
    except (aiohttp.ClientError, OSError) as err:
        raise CliError(f"cannot reach the API server at {server}: {_one_line(str(err))}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from nhi.cli import commands

    return _run(args, commands.status, args.name, args.selector, args.output)


def cmd_renew(args: argparse.Namespace) -> int:
    from nhi.cli import commands

    if sum([bool(args.name), bool(args.all), bool(args.selector)]) != 1:
        raise CliError("renew needs exactly one of NAME, --all or -l SELECTOR")
    if args.name and args.all_namespaces:
        raise CliError("a NAME needs a namespace: use -n NAMESPACE instead of -A")
    return _run(args, commands.renew, args.name, args.all, args.selector)


def cmd_revoke(args: argparse.Namespace) -> int:
    from nhi.cli import commands

    return _run(args, commands.revoke, args.name)


def cmd_inspect_secret(args: argparse.Namespace) -> int:
    from nhi.cli import commands

    return _run(args, commands.inspect_secret, args.name, args.output)


def cmd_history(args: argparse.Namespace) -> int:
    from nhi.cli import commands

    return _run(args, commands.history, args.name, args.output)


def cmd_inventory(args: argparse.Namespace) -> int:
    from nhi.cli import inventory

    return _run(
        args,
        inventory.inventory,
        args.state,
        args.owner,
        args.risk,
        args.output,
        args.config,
    )


def cmd_report(args: argparse.Namespace) -> int:
    from nhi.cli import inventory

    return _run(
        args,
        inventory.report,
        args.risk,
        args.severity,
        args.output,
        args.config,
        args.prometheus,
        args.window,
    )


def cmd_adopt(args: argparse.Namespace) -> int:
    from nhi.cli import adopt

    return _run(args, adopt.adopt, args.target, args.owner, args.apply, args.output, args.config)


def cmd_grant(args: argparse.Namespace) -> int:
    from nhi.cli import grants

    if args.action == "list":
        return _run(args, grants.list_grants, args.output)
    if args.action == "show":
        return _run(args, grants.show, args.name, args.output)
    if args.action == "revoke":
        return _run(args, grants.revoke, args.name)
    decision = "Approved" if args.action == "approve" else "Denied"
    return _run(args, grants.decide, args.name, decision, args.message or "")


def cmd_rightsize(args: argparse.Namespace) -> int:
    from nhi.cli import rightsize

    return _run(args, rightsize.rightsize, args.name, args.operator_namespace)


# ------------------------------------------------------------------------------- parser


def _connection_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--kubeconfig", default=default, help="path to a kubeconfig (default: $KUBECONFIG)"
    )
    parser.add_argument("--context", default=default, help="kubeconfig context to use")


PROMQL_DURATION = re.compile(r"(?:[0-9]{1,6}(?:ms|s|m|h|d|w|y))+")


def _promql_duration(value: str) -> str:
    if not PROMQL_DURATION.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a PromQL duration such as 7d or 12h")
    return value


def _namespace_options(parser: argparse.ArgumentParser, all_namespaces: bool = False) -> None:
    if all_namespaces:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "-n", "--namespace", help="namespace (default: the context's, else default)"
        )
        group.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    else:
        parser.add_argument(
            "-n", "--namespace", help="namespace (default: the context's, else default)"
        )


if TYPE_CHECKING:  # generic only to type checkers
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_status(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "status",
        parents=[common],
        help="identities, their phase and readiness, and each credential's expiry",
        description="Show machine identities with their phase, Ready condition and owner, "
        "and for each credential its Secret, serial or fingerprint, expiry and next renewal.",
    )
    s.add_argument("name", nargs="?", metavar="NAME", help="one identity (default: all)")
    _namespace_options(s, all_namespaces=True)
    s.add_argument("-l", "--selector", help="label selector, e.g. team=payments")
    s.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    s.set_defaults(func=cmd_status)


def _add_renew(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser(
        "renew",
        parents=[common],
        help="ask the operator to renew every credential of identities now",
        description="Set the annotation nhi.dev/renew-requested-at=<now> on the chosen "
        "identities; the operator renews each of their credentials once per request.",
    )
    r.add_argument("name", nargs="?", metavar="NAME", help="the identity to renew")
    r.add_argument("--all", action="store_true", help="every identity in the namespace(s)")
    r.add_argument("-l", "--selector", help="identities matching this label selector")
    _namespace_options(r, all_namespaces=True)
    r.set_defaults(func=cmd_renew)


def _add_revoke(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    v = sub.add_parser(
        "revoke",
        parents=[common],
        help="ask the operator to revoke an identity now",
        description="Set the annotation nhi.dev/revoke=true: the operator revokes the "
        "identity's credentials and does not issue them again.",
    )
    v.add_argument("name", metavar="NAME")
    _namespace_options(v)
    v.set_defaults(func=cmd_revoke)


def _add_inspect(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser(
        "inspect",
        help="decode a credential without showing its value",
        description="Decode what an nhi credential holds; values are never printed.",
    )
    isub = i.add_subparsers(dest="what", required=True, metavar="WHAT")
    isec = isub.add_parser(
        "secret",
        parents=[common],
        help="a credential Secret (token, X509 or StaticSecret)",
        description="X509: the leaf's subject, SANs, SPIFFE ID, serial, validity, key "
        "algorithm, fingerprint, issuer, chain and CA bundle. Token: its claims (audiences, "
        "subject, times, bound object), never the token. StaticSecret: fingerprints of the "
        "current and previous values and when they expire.",
    )
    isec.add_argument("name", metavar="NAME")
    _namespace_options(isec)
    isec.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    isec.set_defaults(func=cmd_inspect_secret)


def _add_history(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    h = sub.add_parser(
        "history",
        parents=[common],
        help="an identity's Events and rotations",
        description="The identity's Events (issued, rotated, revoked, errors) sorted by time, "
        "with the rotation count and last rotation of each credential and any revocation.",
    )
    h.add_argument("name", metavar="NAME")
    _namespace_options(h)
    h.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    h.set_defaults(func=cmd_history)


RISKS = ("NHI1", "NHI4", "NHI5", "NHI7", "NHI8", "NHI9")


def _add_inventory(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    i = sub.add_parser(
        "inventory",
        parents=[common],
        help="every ServiceAccount: its workloads, permissions, credentials, owner, findings",
        description="List every ServiceAccount as a non-human identity: managed (by a "
        "MachineIdentity), system or unmanaged, its attributed owner, the workloads that run "
        "as it, its effective permissions, legacy tokens and findings (docs/inventory.md). "
        "Computed live from the API server; nothing is written.",
    )
    _namespace_options(i, all_namespaces=True)
    i.add_argument("--state", choices=("managed", "system", "unmanaged"))
    i.add_argument("--owner", help="only identities attributed to this owner (or unknown)")
    i.add_argument("--risk", choices=RISKS, help="only identities with a finding of this risk")
    i.add_argument("--config", help="the inventory's settings (the operator's YAML file)")
    i.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    i.set_defaults(func=cmd_inventory)


def _add_report(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser(
        "report",
        parents=[common],
        help="governance KPIs and the inventory's findings",
        description="Coverage, owner coverage, credential ages and the findings of the "
        "inventory, mapped to the OWASP NHI Top 10; --output html writes one self-contained "
        "page for an auditor.",
    )
    _namespace_options(r, all_namespaces=True)
    r.add_argument("--risk", choices=RISKS)
    r.add_argument("--severity", choices=("critical", "high", "medium", "low"))
    r.add_argument("--config", help="the inventory's settings (the operator's YAML file)")
    r.add_argument(
        "-o", "--output", "--format", choices=("table", *STRUCTURED, "html"), default="table"
    )
    r.add_argument(
        "--prometheus",
        metavar="URL",
        help="also read time-to-rotate and time-to-revoke (p50, p95) from the operator's "
        "histograms in this Prometheus",
    )
    r.add_argument(
        "--window",
        default="7d",
        type=_promql_duration,
        help="the window of those timings, a PromQL duration (default 7d)",
    )
    r.set_defaults(func=cmd_report)


def _add_adopt(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    a = sub.add_parser(
        "adopt",
        parents=[common],
        help="write a MachineIdentity that takes over an unmanaged ServiceAccount",
        description="Print (or --apply) a MachineIdentity for an unmanaged ServiceAccount: "
        "its current effective permissions as rules, clusterRules and roleRefs, a workload "
        "selector matching the workloads that use it, the attributed owner, and the "
        "nhi.dev/adopt annotation. The old bindings are left in place and listed.",
    )
    a.add_argument("target", metavar="serviceaccount/NAME")
    _namespace_options(a)
    a.add_argument("--owner", help="the owner (default: the attributed one)")
    a.add_argument("--apply", action="store_true", help="apply it (server-side apply)")
    a.add_argument("--config", help="the inventory's settings (the operator's YAML file)")
    a.add_argument("-o", "--output", choices=STRUCTURED, default="yaml")
    a.set_defaults(func=cmd_adopt)


def _add_grant(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    g = sub.add_parser(
        "grant",
        help="AccessGrants: list, show, approve, deny, revoke",
        description="Just-in-time permissions for machine identities (docs/access-grants.md).",
    )
    gsub = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = gsub.add_parser("list", parents=[common], help="the grants of a namespace (or -A)")
    _namespace_options(ls, all_namespaces=True)
    ls.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    show = gsub.add_parser("show", parents=[common], help="one grant: what, who, when")
    show.add_argument("name", metavar="NAME")
    _namespace_options(show)
    show.add_argument("-o", "--output", choices=("table", *STRUCTURED), default="table")
    for action, text in (
        ("approve", "approve a grant (you may not approve your own)"),
        ("deny", "deny a grant"),
    ):
        d = gsub.add_parser(action, parents=[common], help=text)
        d.add_argument("name", metavar="NAME")
        d.add_argument("-m", "--message", help="words for the record")
        _namespace_options(d)
    r = gsub.add_parser("revoke", parents=[common], help="end a grant now")
    r.add_argument("name", metavar="NAME")
    _namespace_options(r)
    g.set_defaults(func=cmd_grant)


def _add_rightsize(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    r = sub.add_parser(
        "rightsize",
        parents=[common],
        help="the smallest permissions covering an identity's observed use, as a diff",
        description="Print, as a unified diff against spec.permissions, the smallest rules "
        "and clusterRules covering what the identity's ServiceAccount was seen doing (from the "
        "API server's audit events, docs/usage.md). Never wider than declared; roleRefs are "
        "kept as they are.",
    )
    r.add_argument("name", metavar="NAME", help="the MachineIdentity")
    _namespace_options(r)
    r.add_argument(
        "--operator-namespace",
        default=os.environ.get("NHI_NAMESPACE", "nhi-system"),
        help="where the operator keeps the usage records (default %(default)s)",
    )
    r.set_defaults(func=cmd_rightsize)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nhi", description="Inspect and operate nhi-operator's machine identities."
    )
    _connection_options(p, None)
    # The connection options are accepted after the command too (nhi status --context x).
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_status,
        _add_renew,
        _add_revoke,
        _add_inspect,
        _add_history,
        _add_grant,
        _add_inventory,
        _add_report,
        _add_adopt,
        _add_rightsize,
    ):
        add(sub, common)
    ver = sub.add_parser("version", parents=[common], help="print the version")
    ver.set_defaults(func=cmd_version)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # the promise: one line, never a traceback
        print(f"error: {type(err).__name__}: {_one_line(str(err))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
