"""``trainresults``: the same library, for a terminal.

    trainresults inspect URI [--json]
    trainresults best URI --metric M --mode min|max [--ties latest|earliest] [--json]
    trainresults registry --base PATH list|show|promote|rollback|history ...

S3 locations use the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for S3-compatible stores). Exit codes: 0 ok, 2 usage, 3 bad or missing
input (the message says what and where), 4 nothing eligible (no finite metric), 5 promotion
conflict.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from trainresults_dagster.runs.metrics import flatten_metrics

EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_NONE_ELIGIBLE, EXIT_CONFLICT = 0, 2, 3, 4, 5


def _filesystem(uri: str) -> Any:
    """The S3 filesystem for ``s3://`` URIs (the default AWS chain and environment, the same
    settings as every other component), else None (resolved from the path)."""
    import trainresults_dagster.storage as storage

    if storage.split_scheme(uri)[0] == "s3":
        return storage.S3Settings().filesystem()
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .runs.result import TrainResult

    result = TrainResult.from_path(args.uri, _filesystem(args.uri), missing_checkpoints="drop")
    if args.json:
        summary = result.summary()
        summary["checkpoints"] = [
            {"name": c.dir_name, "uri": c.uri, "metrics": m} for c, m in result.checkpoints_with_metrics()
        ]
        print(json.dumps(summary, default=str, indent=2))
        return EXIT_OK
    print(f"run        {result.uri}")
    print(f"layout     {result.layout}    status {result.status}")
    print(f"reports    {len(result.history)}    checkpoints {len(result.checkpoints)}")
    if result.missing_checkpoints:
        print(f"missing    {', '.join(result.missing_checkpoints)} (named by the snapshot, gone)")
    pairs = list(result.checkpoints_with_metrics())
    if pairs:
        keys = sorted({k for _, m in pairs for k, v in flatten_metrics(m).items()
                       if isinstance(v, int | float) and not isinstance(v, bool)})[:6]
        latest = result.checkpoint.dir_name if result.checkpoint else None
        rows = [[c.dir_name + (" *" if c.dir_name == latest else "")] + [flatten_metrics(m).get(k, "") for k in keys]
                for c, m in pairs]
        print()
        print(_table(["checkpoint (* latest)"] + keys, rows))
    if result.error is not None:
        print()
        print(f"error      {result.error.error_type}: {result.error.message.splitlines()[0] if result.error.message else ''}")
        for rank, failure in sorted(result.error.worker_failures.items()):
            print(f"  rank {rank}: {failure}")
    return EXIT_OK


def cmd_best(args: argparse.Namespace) -> int:
    from .runs.result import TrainResult
    from .runs.selection import select_best_checkpoint

    result = TrainResult.from_path(args.uri, _filesystem(args.uri), missing_checkpoints="drop")
    ckpt, metrics = select_best_checkpoint(result, args.metric, args.mode, ties=args.ties)
    if args.json:
        print(json.dumps({"uri": ckpt.uri, "name": ckpt.dir_name, "metrics": metrics}, default=str))
    else:
        print(ckpt.uri)
    return EXIT_OK


def _registry(args: argparse.Namespace) -> Any:
    from .registry.registry import Registry

    fs = _filesystem(args.base)
    return Registry.open(args.base, fs)


def _version_dict(mv: Any) -> dict[str, Any]:
    return mv.to_dict() if hasattr(mv, "to_dict") else dict(mv)


def cmd_registry(args: argparse.Namespace) -> int:
    reg = _registry(args)
    if args.action == "list":
        rows = [_version_dict(v) for v in reg.versions(args.model)]
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
        else:
            print(_table(["version", "checkpoint", "created_at"],
                         [[r["version"], r["uri"], r["created_at"]] for r in rows]))
        return EXIT_OK
    if args.action == "show":
        mv = reg.get_version(args.model, args.version) if args.version else reg.get(args.model, alias=args.alias)
        print(json.dumps(_version_dict(mv), default=str, indent=2))
        return EXIT_OK
    if args.action == "promote":
        # Without --expected-version the move is unchecked (...); with it, compare-and-set.
        expected = ... if args.expected_version is None else args.expected_version
        mv = reg.promote(args.model, args.version, alias=args.alias,
                         expected_version=expected, reason=args.reason)
        print(json.dumps(_version_dict(mv), default=str, indent=2) if args.json
              else f"{args.model}@{args.alias} -> version {args.version}")
        return EXIT_OK
    if args.action == "rollback":
        mv = reg.rollback(args.model, alias=args.alias)
        print(json.dumps(_version_dict(mv), default=str, indent=2) if args.json
              else f"{args.model}@{args.alias} rolled back to version {mv.version}")
        return EXIT_OK
    entries = reg.history(args.model, alias=args.alias)
    rows = [e if isinstance(e, dict) else e.to_dict() for e in entries]
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        print(_table(["seq", "action", "version", "previous", "who", "at", "reason"],
                     [[r.get("seq"), r.get("action"), r.get("version"), r.get("previous_version"),
                       r.get("who"), r.get("at"), r.get("reason")] for r in rows]))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainresults", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="summary of a run: metrics, checkpoints, error")
    p.add_argument("uri", help="run folder: local path or s3://bucket/run")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("best", help="URI of the best checkpoint (NaN/inf/missing never chosen)")
    p.add_argument("uri")
    p.add_argument("--metric", required=True, help="metric name; nested as a/b")
    p.add_argument("--mode", required=True, choices=["min", "max"])
    p.add_argument("--ties", default="latest", choices=["latest", "earliest"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("registry", help="list, show, promote, roll back model versions")
    p.add_argument("--base", required=True, help="registry location: folder or s3://bucket/prefix")
    p.add_argument("--json", action="store_true")
    rsub = p.add_subparsers(dest="action", required=True)
    for action in ("list", "show", "promote", "rollback", "history"):
        a = rsub.add_parser(action)
        a.add_argument("model")
        if action in ("show", "promote"):
            a.add_argument("--version", type=int, required=action == "promote")
        if action != "list":
            a.add_argument("--alias", default="champion")
        if action == "promote":
            a.add_argument("--expected-version", type=int, default=None,
                           help="compare-and-set: the version the alias must point at now")
            a.add_argument("--reason", default="promoted from the command line")
    p.set_defaults(func=cmd_registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import NoEligibleCheckpointError, PromotionConflict, TrainResultsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except NoEligibleCheckpointError as exc:
        print(f"trainresults: {exc}", file=sys.stderr)
        return EXIT_NONE_ELIGIBLE
    except PromotionConflict as exc:
        print(f"trainresults: {exc}", file=sys.stderr)
        return EXIT_CONFLICT
    except (TrainResultsError, ValueError, OSError, KeyError, LookupError) as exc:
        print(f"trainresults: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
