"""``chalkd secret`` and ``chalkd integration``: the command-line side of the Secrets service.

    chalkd secret set OPENAI_API_TOKEN                  # prompts (or reads stdin); not in shell history
    printf %s "$TOKEN" | chalkd secret set OPENAI_API_TOKEN
    chalkd secret set OPENAI_API_TOKEN --value sk-...   # allowed, with a warning: `ps` and shell history show it
    chalkd secret list                                  # names and times, never values
    chalkd secret delete OPENAI_API_TOKEN
    chalkd integration set prod_postgres --from-env-file pg.env      # the safe way: values never on a command line
    chalkd integration set prod_postgres HOST=db.internal USER=app   # allowed, with a warning (`ps` shows them)
    chalkd integration list                             # names and keys, never values
    chalkd integration delete prod_postgres

Wired into :mod:`chalkd.cli`, which owns the connection to the daemon.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

log = logging.getLogger(__name__)

__all__ = ["SecretCommandError", "add_parsers", "secret_command"]


class SecretCommandError(Exception):
    """A problem with the command's input (printed as ``chalkd: ...``, exit 1)."""


def add_parsers(sub: argparse._SubParsersAction, default_target: str) -> None:
    secret = sub.add_parser("secret", help="secrets functions and containers get as env vars")
    s_sub = secret.add_subparsers(dest="action", required=True)
    s_set = s_sub.add_parser(
        "set", help="create or replace a secret (value from stdin or a prompt)",
        description="The value is read from stdin (`printf %s \"$TOKEN\" | chalkd secret set NAME`) or a "
                    "prompt on a terminal: the safe ways. --value puts it on the command line, where "
                    "other users' `ps` and your shell history can read it.")
    s_set.add_argument("name")
    s_set.add_argument("--value", default=None,
                       help="the value on the command line (visible to `ps` and kept in shell history: "
                            "prefer stdin or the prompt)")
    s_list = s_sub.add_parser("list", help="list secrets (names, never values)")
    s_del = s_sub.add_parser("delete", help="delete a secret")
    s_del.add_argument("name")

    integ = sub.add_parser("integration", help="named groups of secrets (Secret.from_integration)")
    i_sub = integ.add_subparsers(dest="action", required=True)
    i_set = i_sub.add_parser(
        "set", help="create an integration or replace all its keys",
        description="--from-env-file FILE (KEY=VALUE lines; # comments, blank lines, `export` and quotes "
                    "allowed) is the safe way: KEY=VALUE arguments are on the command line, where other "
                    "users' `ps` and your shell history can read them.")
    i_set.add_argument("name")
    i_set.add_argument("pairs", nargs="*", metavar="KEY=VALUE",
                       help="keys and values on the command line (visible to `ps` and kept in shell "
                            "history: prefer --from-env-file)")
    i_set.add_argument("--from-env-file", default=None, metavar="FILE",
                       help="read KEY=VALUE lines from FILE (KEY=VALUE arguments win)")
    i_list = i_sub.add_parser("list", help="list integrations (names and keys, never values)")
    i_del = i_sub.add_parser("delete", help="delete an integration")
    i_del.add_argument("name")
    for p in (s_set, s_list, s_del, i_set, i_list, i_del):
        p.add_argument("--target", default=default_target, help="daemon address")


async def secret_command(args, channel, console: Console) -> int:
    from chalkcompute._proto import chalk_v1_chalk_pb2 as pb
    from chalkcompute._proto.chalk_v1_chalk_grpc import SecretsStub

    stub = SecretsStub(channel)
    if args.command == "secret":
        if args.action == "set":
            value = _read_value(args.name, args.value)
            resp = await stub.SetSecret(pb.SetSecretRequest(name=args.name, value=value))
            if args.value is not None:  # after success: a failure prints its one error line alone
                _warn_command_line("--value", "pipe the value on stdin instead")
            console.print(f"secret {escape(args.name)} {'created' if resp.created else 'updated'}", highlight=False)
        elif args.action == "list":
            resp = await stub.ListSecrets(pb.ListSecretsRequest())
            table = Table("NAME", "CREATED", "UPDATED")
            for s in resp.secrets:
                table.add_row(escape(s.name), _when(s.created_at), _when(s.updated_at))
            console.print(table)
        elif args.action == "delete":
            await stub.DeleteSecret(pb.DeleteSecretRequest(name=args.name))
            console.print(f"secret {escape(args.name)} deleted", highlight=False)
        return 0
    if args.action == "set":
        values = _integration_values(args.pairs, args.from_env_file)
        resp = await stub.SetIntegration(pb.SetIntegrationRequest(name=args.name, values=values))
        if args.pairs:  # after success: a failure prints its one error line alone
            _warn_command_line("KEY=VALUE arguments", "use --from-env-file FILE instead")
        console.print(f"integration {escape(args.name)} {'created' if resp.created else 'updated'} with keys "
                      f"{escape(', '.join(resp.info.keys))}", highlight=False)
    elif args.action == "list":
        resp = await stub.ListIntegrations(pb.ListIntegrationsRequest())
        table = Table("NAME", "KEYS", "CREATED", "UPDATED")
        for i in resp.integrations:
            table.add_row(escape(i.name), escape(", ".join(i.keys)), _when(i.created_at), _when(i.updated_at))
        console.print(table)
    elif args.action == "delete":
        await stub.DeleteIntegration(pb.DeleteIntegrationRequest(name=args.name))
        console.print(f"integration {escape(args.name)} deleted", highlight=False)
    return 0


def _warn_command_line(what: str, instead: str) -> None:
    """Say, on stderr, that values given as arguments are readable by anyone who can list processes."""
    print(f"chalkd: warning: values in {what} are on the command line, where other users can read them "
          f"(`ps`, /proc) and your shell history keeps them; {instead}", file=sys.stderr)


def _read_value(name: str, given: str | None) -> str:
    """The secret's value: --value, else a prompt on a terminal, else all of stdin
    (one trailing newline dropped: ``echo tok |`` means "tok")."""
    if given is not None:
        value = given
    elif sys.stdin is not None and sys.stdin.isatty():
        value = getpass.getpass(f"value of secret {name}: ")
    else:
        value = sys.stdin.read() if sys.stdin is not None else ""
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise SecretCommandError(f"no value for secret {name}: pass it on stdin, at the prompt or with --value")
    return value


def _integration_values(pairs: list[str], env_file: str | None) -> dict[str, str]:
    from chalkcompute.exceptions import InvalidArgumentError
    from chalkcompute.secret import parse_env_file

    values: dict[str, str] = {}
    if env_file is not None:
        try:
            values.update(parse_env_file(env_file))
        except InvalidArgumentError as exc:
            raise SecretCommandError(str(exc)) from None
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            # No '=' means no value in it: naming the argument is safe.
            raise SecretCommandError(f"expected KEY=VALUE, got {key!r}")
        values[key] = value
    if not values:
        raise SecretCommandError("give KEY=VALUE pairs or --from-env-file FILE")
    return values


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""
