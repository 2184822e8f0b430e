"""The ``pgagent-watch`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

import psycopg

from . import __version__, capture
from .config import Settings, load_settings
from .errors import PgAgentWatchError

logger = logging.getLogger("pgagent_watch")

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def say(line: str) -> None:
    """Print a line for the user (and scripts) at once, not when a buffer fills."""
    print(line, flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def _server(settings: Settings, name: str) -> tuple[int, str]:
    for server_id, server in settings.server_ids().items():
        if server.name == name:
            return server_id, server.conninfo()
    known = ", ".join(s.name for s in settings.servers) or "none"
    raise PgAgentWatchError(
        f"no server named {name!r} in the configuration (known: {known})"
    )


def cmd_install(args: argparse.Namespace) -> int:
    _, conninfo = _server(_settings(args), args.server)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        version = capture.install(conn)
    say(f"capture version {version} installed on {args.server}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    _, conninfo = _server(_settings(args), args.server)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        capture.uninstall(conn)
    say(f"capture removed from {args.server}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    failures = 0
    for _, server in settings.server_ids().items():
        try:
            with psycopg.connect(server.conninfo(), autocommit=True) as conn:
                if not capture.has_pgagent(conn):
                    raise PgAgentWatchError("pgAgent's schema is missing")
                version = capture.installed_version(conn)
                if version is None:
                    raise PgAgentWatchError("capture not installed")
                row = conn.execute(
                    "SELECT count(*) FROM pgagent.pga_jobagent a"
                    " JOIN pg_stat_activity p ON p.pid = a.jagpid"
                ).fetchone()
                agents = row[0] if row else 0
            if agents:
                say(f"{server.name}: ok (capture {version}, {agents} live agents)")
            else:
                say(f"{server.name}: ok (capture {version}), but NO live pgAgent agent")
        except Exception as exc:
            failures += 1
            reason = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
            say(f"{server.name}: FAILED: {reason}")
    return 1 if failures else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve
    from .service import Service

    settings = _settings(args)
    host = args.host or settings.web.host
    port = args.port if args.port is not None else settings.web.port
    service = Service(settings)
    asyncio.run(
        serve(service, host, port, on_ready=lambda: say(f"page: http://{host}:{port}/"))
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        args.port,
        say=say,
        alert_window=args.alert_window,
        alert_batch=args.alert_batch,
    )


def cmd_send_test_alert(args: argparse.Namespace) -> int:
    """Send one message through the configured channel; print the answer."""
    import socket

    from .alerts.channels import DeliveryError
    from .alerts.manager import channels_for, send_test

    settings = _settings(args)
    channels = channels_for(settings)
    where = args.channel or "email"
    try:
        answer = asyncio.run(
            send_test(channels, args.to, args.channel, socket.getfqdn() or "localhost")
        )
    except DeliveryError as exc:
        kind = "refused" if exc.permanent else "failed"
        say(f"test message {kind}: {exc}")
        return 1
    say(f"test message sent through {where}: {answer}")
    return 0


def cmd_reset_mark(args: argparse.Namespace) -> int:
    """Forget a server's stored alert cursor: its alerts start again from now."""
    from .alerts.engine import RESET_MARK_SQL

    settings = _settings(args)
    _server(settings, args.server)
    with psycopg.connect(settings.state_conninfo(), autocommit=True) as conn:
        cur = conn.execute(RESET_MARK_SQL, (args.server,))
    if cur.rowcount:
        say(
            f"alert cursor of {args.server} reset: alerts start from the next event"
            " (restart the service, or it picks this up on its next read)"
        )
    else:
        say(f"no stored alert cursor for {args.server}: nothing to reset")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from .auth.admin import add_user

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    created = asyncio.run(
        add_user(
            _settings(args),
            args.name,
            args.role,
            email=args.email,
            servers=args.server,
            password=password,
        )
    )
    say(f"user {created.name} created (id {created.user_id})")
    if created.password is not None:
        say(f"password: {created.password}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    from .auth.admin import list_users

    for user in asyncio.run(list_users(_settings(args))):
        flags = " (disabled)" if user["disabled"] else ""
        servers = ",".join(user["servers"]) or "-"
        say(f"{user['name']}\t{user['role']}\t{user['email'] or '-'}\t{servers}{flags}")
    return 0


def cmd_user_token(args: argparse.Namespace) -> int:
    from .auth.admin import new_token

    say(asyncio.run(new_token(_settings(args), args.name, args.label)))
    return 0


def port(text: str) -> int:
    """A TCP port number, for argparse: 0 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgagent-watch", description="Live job status and alerting for pgAgent."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, func: Command, help: str, config: bool = True
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument(
                "--config", "-c", default=None, help="the TOML configuration file"
            )
        p.set_defaults(func=func)
        return p

    p = add(
        "demo",
        cmd_demo,
        "run the demo: a throwaway cluster, pgAgent, sample jobs",
        False,
    )
    p.add_argument("--port", type=port, default=8080, help="the page's port (8080)")
    p.add_argument(
        "--alert-window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long alerts wait to be grouped after a digest (120)",
    )
    p.add_argument(
        "--alert-batch",
        type=int,
        default=None,
        metavar="N",
        help="a digest leaves at once when this many alerts wait (250)",
    )
    p = add("serve", cmd_serve, "watch the configured servers and serve the page")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=port, default=None)
    p = add("install", cmd_install, "install or upgrade capture in a server's database")
    p.add_argument(
        "--server", required=True, help="the server's name in the configuration"
    )
    p = add("uninstall", cmd_uninstall, "remove capture from a server's database")
    p.add_argument("--server", required=True)
    add("check", cmd_check, "check that every server is reachable and watched")

    user = sub.add_parser("user", help="manage users", description="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)

    def add_user_cmd(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = user_sub.add_parser(name, help=help, description=help)
        p.add_argument(
            "--config", "-c", default=None, help="the TOML configuration file"
        )
        p.set_defaults(func=func)
        return p

    p = add_user_cmd("add", cmd_user_add, "create a user (prints a generated password)")
    p.add_argument("name")
    p.add_argument("--email", default=None)
    p.add_argument("--role", default="viewer", choices=["viewer", "operator", "admin"])
    p.add_argument(
        "--server",
        action="append",
        default=None,
        help="a server the user may see (repeat; default: every server)",
    )
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    add_user_cmd("list", cmd_user_list, "list the users")
    p = add_user_cmd("token", cmd_user_token, "create an API token (printed once)")
    p.add_argument("name")
    p.add_argument("--label", default="cli", help="what the token is for")
    p = add(
        "send-test-alert",
        cmd_send_test_alert,
        "send one test message through the configured channel",
    )
    p.add_argument("--to", default=None, help="the address to send to (e-mail)")
    p.add_argument(
        "--channel", default=None, help="a configured channel instead of e-mail"
    )
    p = add(
        "reset-mark",
        cmd_reset_mark,
        "forget a server's stored alert cursor (after a restore into a new cluster)",
    )
    p.add_argument("--server", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except PgAgentWatchError as exc:
        print(f"pgagent-watch: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"pgagent-watch: database error: {str(exc).strip()}", file=sys.stderr)
        return 2
