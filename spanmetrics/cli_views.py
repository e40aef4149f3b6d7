"""``spanmetrics views apply|list|diff``: the fleet-wide control document in Redis (views,
span filters, span-name rules, budgets).

Workers read it every second and switch at their next flush (README "Views in a running
fleet"). ``apply`` validates the whole topology it makes before anything is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import getpass
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import yaml

from spanmetrics.config.control import CONTROL_KEYS, read_control, with_control
from spanmetrics.config.load import ConfigError, load_topology, parse_topology
from spanmetrics.config.model import Topology
from spanmetrics.state.store import AuditEntry, RedisStateStore

#: Exit status of ``diff`` when the documents differ (as diff(1)).
EXIT_DIFFERENT = 1


def canonical(document: dict[str, object]) -> str:
    """A control document as stored: YAML of its keys, in their fixed order."""
    ordered = {k: document[k] for k in CONTROL_KEYS if k in document}
    return yaml.safe_dump(ordered, sort_keys=False) if ordered else ""


def summary(before: dict[str, object], after: dict[str, object]) -> str:
    """What changed, for the audit trail."""
    parts = []
    for key in CONTROL_KEYS:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key == "views":
            n_old = len(old) if isinstance(old, list) else 0
            n_new = len(new) if isinstance(new, list) else 0
            parts.append(f"views {n_old} -> {n_new}" if n_old != n_new else "views changed")
        else:
            parts.append(
                f"{key} {'set' if old is None else 'removed' if new is None else 'changed'}"
            )
    return ", ".join(parts) or "no change"


def _topology(args: argparse.Namespace) -> Topology:
    topology = load_topology(args.topology) if args.topology else parse_topology({})
    document = topology.model_dump(exclude_none=True, by_alias=True)
    if args.state:
        document["state"] = args.state
    if args.group:
        document["source"]["group"] = args.group
    return parse_topology(document, args.topology or "command line")


def _store(topology: Topology) -> RedisStateStore:
    if not topology.state.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            "--state", [f"state: a fleet's views live in Redis, got {topology.state!r}"]
        )
    return RedisStateStore(topology.state, topology.source.group)


def _run(coro: Coroutine[Any, Any, int], state: str) -> int:
    """Run a command's Redis work; an unreachable Redis is one line, not a traceback."""
    import redis

    try:
        return asyncio.run(coro)
    except redis.RedisError as err:
        print(f"error: state {state}: {err}", file=sys.stderr)
        return 1


def cmd_apply(args: argparse.Namespace) -> int:
    """Validate FILE and store it as the next version."""
    topology = _topology(args)
    text = Path(args.file).read_text(encoding="utf-8")
    with_control(topology, text, args.file)  # raises ConfigError: nothing is stored
    document = read_control(text, args.file)
    store = _store(topology)

    async def run() -> int:
        try:
            current = await store.load_control()
            before = read_control(current.document, "stored") if current else {}
            if current is not None and canonical(before) == canonical(document):
                print(f"unchanged: views version {current.version} is {args.file}")
                return 0
            who = args.who or f"{getpass.getuser()}@{socket.gethostname()}"
            entry = AuditEntry(0, who, time.time(), summary(before, document))
            version = await store.save_control(canonical(document), entry)
            print(f"applied {args.file} as views version {version} ({entry.summary}); "
                  "workers switch at their next flush, within seconds")  # fmt: skip
            return 0
        finally:
            await store.close()

    return _run(run(), store.url)


def cmd_list(args: argparse.Namespace) -> int:
    """Print the stored document and its audit trail."""
    store = _store(_topology(args))

    async def run() -> int:
        try:
            current = await store.load_control()
            audit = await store.control_audit()
        finally:
            await store.close()
        if current is None:
            print("no views applied: workers run their topology's own views")
            return 0
        print(f"views version {current.version}:")
        print(current.document.rstrip() or "(empty: no views)")
        print("\nchanges:")
        for e in audit:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.when_unix))
            print(f"  v{e.version}  {when} UTC  {e.who}  {e.summary}")
        return 0

    return _run(run(), store.url)


def cmd_diff(args: argparse.Namespace) -> int:
    """Show how FILE differs from the stored document (status 1 when it does)."""
    topology = _topology(args)
    text = Path(args.file).read_text(encoding="utf-8")
    with_control(topology, text, args.file)
    new = canonical(read_control(text, args.file))
    store = _store(topology)

    async def run() -> int:
        try:
            current = await store.load_control()
        finally:
            await store.close()
        old = current.document if current else ""
        label = f"views version {current.version}" if current else "no views applied"
        lines = list(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                          label, args.file))  # fmt: skip
        sys.stdout.writelines(lines)
        return EXIT_DIFFERENT if lines else 0

    return _run(run(), store.url)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``views`` command group."""
    views = sub.add_parser(
        "views",
        help="views for a whole running fleet, in Redis: apply, list, diff",
        description="Views, span filters, span-name rules and series budgets that every "
        "worker of a fleet runs, stored in Redis with versions and an audit trail. Workers "
        "switch to a new version at their next flush, within seconds of apply.",
    )
    commands = views.add_subparsers(dest="views_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--topology", metavar="FILE", help="the fleet's topology (its state and group)"
        )
        p.add_argument("--state", metavar="URL", help="redis://HOST:PORT/DB (as the worker's)")
        p.add_argument("--group", help="consumer group (as the worker's)")

    apply = commands.add_parser("apply", help="validate FILE and make it the fleet's views")
    apply.add_argument("file", metavar="FILE",
                       help="YAML with views, span_filters, span_names and budgets")  # fmt: skip
    apply.add_argument("--who", help="name in the audit trail (default: user@host)")
    common(apply)
    apply.set_defaults(func=cmd_apply)
    listing = commands.add_parser("list", help="the fleet's views and their audit trail")
    common(listing)
    listing.set_defaults(func=cmd_list)
    diff = commands.add_parser("diff", help="how FILE differs from the fleet's views")
    diff.add_argument("file", metavar="FILE")
    common(diff)
    diff.set_defaults(func=cmd_diff)
