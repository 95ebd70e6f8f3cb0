"""``trainresults``: the same library, for a terminal.

    trainresults inspect URI [--json]
    trainresults best URI --metric M --mode min|max [--scope all|last] [--ties latest|earliest]
                      [--exclude-errored] [--json]
    trainresults registry --base PATH list|show|promote|rollback|history ...
    trainresults registry --base PATH verify MODEL [--alias A | --version V] [--hashes]
    trainresults registry --base PATH card MODEL VERSION

URI is a Ray Train run folder (V2 run, V1 trial) or a Ray Tune experiment folder (a sweep:
``inspect`` shows the trials table, ``best`` the best checkpoint across trials).

S3 locations use the standard AWS environment (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``,
``AWS_ENDPOINT_URL`` for S3-compatible stores). Exit codes: 0 ok, 2 usage, 3 bad or missing
input (the message says what and where), 4 nothing eligible (no finite metric), 5 promotion
conflict, 6 a version's files are missing or changed (``verify``; ``rollback`` refuses such
a target); 1 is an unexpected error (a bug: ``TRAINRESULTS_DEBUG=1`` shows its traceback).
Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, NoReturn

from trainresults_dagster.runs.metrics import flatten_metrics

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_NONE_ELIGIBLE, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5
EXIT_INTEGRITY = 6


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (what was wrong, and where to look
    for the right form) and exit code 2, so scripts can tell it from a bad input (3)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: object) -> str:
    """A message on one line: pyarrow and JSON errors may span several."""
    return " | ".join(part.strip() for part in str(text).splitlines() if part.strip())


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


def _sweep(uri: str) -> Any:
    """The sweep at ``uri`` when it is a Ray Tune experiment folder, else None."""
    import trainresults_dagster.storage as storage

    from .runs.experiment import is_state_file
    from .runs.tune import TrainResultGrid

    fs, path = storage.resolve(uri, _filesystem(uri))
    if not any(is_state_file(i.base_name) for i in storage.list_dir(fs, path)):
        return None
    return TrainResultGrid.from_path(path, fs)


def _inspect_sweep(grid: Any, as_json: bool) -> int:
    from .runs.tune import AUTO_KEYS

    table = grid.trials_table
    if as_json:
        import trainresults_dagster.storage as storage

        summary = grid.summary()
        summary["trials_table"] = table.to_dict(orient="records")
        print(json.dumps(storage.json_value(summary), indent=2))  # NaN -> null: strict JSON
        return EXIT_OK
    print(f"sweep      {grid.uri}")
    print(f"trials     {len(grid)}    errored {grid.num_errors}    terminated "
          f"{grid.num_terminated}" + (f"    objective {grid.metric}" if grid.metric else ""))
    config = [c for c in table.columns if str(c).startswith("config/")][:4]
    skip = {"trial_id", "status", "error_type", "error", "num_checkpoints", "num_failures", "uri"}
    metrics = [c for c in table.columns if c not in skip and c not in config
               and str(c).split("/", 1)[0] not in AUTO_KEYS
               and table[c].map(lambda v: isinstance(v, int | float) and not isinstance(v, bool)).all()][:5]
    if len(table):
        headers = ["trial_id", "status", "checkpoints", *config, *metrics]
        rows = [[r["trial_id"], r["status"], r["num_checkpoints"], *[r[c] for c in config],
                 *[r[c] for c in metrics]] for _, r in table.iterrows()]
        print()
        print(_table(headers, rows))
    if grid.errored_trials:
        print()
        for trial in grid.errored_trials:
            error = trial.error
            first = error.message.splitlines()[0] if error and error.message else ""
            print(f"error      {trial.trial_id}  {error.error_type if error else ''}: {first}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .runs.result import TrainResult

    grid = _sweep(args.uri)
    if grid is not None:
        return _inspect_sweep(grid, args.json)
    result = TrainResult.from_path(args.uri, _filesystem(args.uri), missing_checkpoints="drop")
    if args.json:
        summary = result.summary()
        summary["checkpoints"] = [
            {"name": c.dir_name, "uri": c.uri, "metrics": m} for c, m in result.checkpoints_with_metrics()
        ]
        print(json.dumps(summary, default=str, indent=2))
        return EXIT_OK
    print(f"run        {result.uri}")
    print(f"layout     {result.layout}    status {result.status}{_status_note(result)}")
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
    record = result.record
    retried = [f for f in record.failures if not f.terminal] if record is not None else []
    if retried:
        print()
        print(f"retried    {len(retried)} failure(s) Ray retried:")
        for failure in retried[-5:]:
            first = failure.message.splitlines()[0] if failure.message else ""
            print(f"  attempt {failure.attempt}: {failure.error_type}: {first[:120]}")
    if result.error is not None:
        print()
        print(f"error      {result.error.error_type}: {result.error.message.splitlines()[0] if result.error.message else ''}")
        for rank, failure in sorted(result.error.worker_failures.items()):
            print(f"  rank {rank}: {failure}")
    return EXIT_OK


def _status_note(result: Any) -> str:
    """Where the status comes from, and how sure it is."""
    record = result.record
    if record is None:
        if result.layout == "v2" and result.status == "unknown":
            return " (no RunRecorder record: Ray Train V2 stores no status)"
        return ""
    if record.updated_at is None:
        return ""
    ago = max(0.0, time.time() - record.updated_at)
    if result.status == "running":
        return f" (record updated {ago:.0f} s ago)"
    if result.status == "unknown" and record.status == "running":
        return (f" (record says running, but its last line is {ago:.0f} s old: the controller "
                "was killed, lost its node, or waits for resources)")
    return ""


def cmd_best(args: argparse.Namespace) -> int:
    from .runs.result import TrainResult
    from .runs.selection import select_best_checkpoint

    grid = _sweep(args.uri)
    if grid is not None:
        best = grid.best_checkpoint(args.metric, args.mode, scope=args.scope, ties=args.ties,
                                    include_errored=not args.exclude_errored)
        if args.json:
            import trainresults_dagster.storage as storage

            print(json.dumps(storage.json_value({
                "uri": best.checkpoint.uri, "name": best.checkpoint.dir_name,
                "metrics": best.metrics, "trial_id": best.trial.trial_id,
                "trial_status": best.trial.trial_status, "config": best.trial.config,
                "trial_uri": best.trial.uri,
            })))
        else:
            print(best.checkpoint.uri)
        return EXIT_OK
    result = TrainResult.from_path(args.uri, _filesystem(args.uri), missing_checkpoints="drop")
    ckpt, metrics = select_best_checkpoint(result, args.metric, args.mode, ties=args.ties,
                                           scope=args.scope)
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


def cmd_verify(reg: Any, args: argparse.Namespace) -> int:
    report = reg.verify(args.model, args.version, alias=args.alias, hashes=args.hashes)
    if args.json:
        print(json.dumps(report.to_dict(), default=str, indent=2))
    else:
        print(("ok      " if report.ok else "FAILED  ") + report.summary())
        for note in report.notes:
            print(f"note    {note}")
    return EXIT_OK if report.ok else EXIT_INTEGRITY


def cmd_card(reg: Any, args: argparse.Namespace) -> int:
    from .registry.card import card_from_version, render_markdown

    card = reg.card(args.model, args.version)
    if card is None:
        mv = reg.get_version(args.model, args.version)
        card = card_from_version(mv, alias=args.alias, registry_uri=reg.uri,
                                 history=reg.history(args.model, args.alias, limit=5))
    print(render_markdown(card, image=card.get("picture")))
    return EXIT_OK


def _require_model(reg: Any, model: str) -> None:
    """A model is in the registry once it has a version: a typo must not read as 'empty'."""
    from .errors import VersionNotFoundError
    from .registry.model_version import validate_name

    validate_name(model, what="model name")
    if not reg.versions(model):
        known = reg.models()
        raise VersionNotFoundError(
            f"model {model!r} has no versions in registry {reg.uri}; "
            + (f"models there: {', '.join(known[:10])}" if known else "the registry is empty")
        )


def cmd_registry(args: argparse.Namespace) -> int:
    from .errors import VersionNotFoundError

    reg = _registry(args)
    if args.action == "verify":
        return cmd_verify(reg, args)
    if args.action == "card":
        return cmd_card(reg, args)
    if args.action in ("list", "show", "history"):
        _require_model(reg, args.model)
    if args.action == "list":
        rows = [_version_dict(v) for v in reg.versions(args.model)]
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
        else:
            print(_table(["version", "checkpoint", "created_at"],
                         [[r["version"], r["uri"], r["created_at"]] for r in rows]))
        return EXIT_OK
    if args.action == "show":
        if args.version is not None:
            mv = reg.get_version(args.model, args.version)
        else:
            mv = reg.get(args.model, alias=args.alias)
            if mv is None:
                raise VersionNotFoundError(
                    f"alias {args.alias!r} of model {args.model!r} is not set in registry "
                    f"{reg.uri}; promote a version first (trainresults registry --base "
                    f"{args.base} promote {args.model} --version N) or pass --version N"
                )
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
    parser = _Parser(prog="trainresults", description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="summary of a run (metrics, checkpoints, error) or of a "
                                       "Ray Tune sweep (the trials table)")
    p.add_argument("uri", help="run or experiment folder: local path, s3://, gs:// or abfs:// URI")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("best", help="URI of the best checkpoint (NaN/inf/missing never chosen)")
    p.add_argument("uri")
    p.add_argument("--metric", required=True, help="metric name; nested as a/b")
    p.add_argument("--mode", required=True, choices=["min", "max"])
    p.add_argument("--ties", default="latest", choices=["latest", "earliest"])
    p.add_argument("--scope", default="all", choices=["all", "last"],
                   help="every checkpoint, or only the latest of each run (trial)")
    p.add_argument("--exclude-errored", action="store_true",
                   help="for a sweep: leave errored trials out")
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
    a = rsub.add_parser("verify", help="check a version's files against what register recorded")
    a.add_argument("model")
    a.add_argument("--alias", default="champion", help="the version this alias points at")
    a.add_argument("--version", type=int, default=None, help="this version instead")
    a.add_argument("--hashes", action="store_true",
                   help="also read and hash every file (default: sizes and store checksums "
                   "from one listing)")
    a = rsub.add_parser("card", help="the model card of a version, as Markdown")
    a.add_argument("model")
    a.add_argument("version", type=int)
    a.add_argument("--alias", default="champion", help="for a version no promotion evaluated")
    p.set_defaults(func=cmd_registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and an exit code (see the module
    docstring), never a traceback: ``TRAINRESULTS_DEBUG=1`` shows the traceback of an
    unexpected error (exit 1, a bug to report)."""
    from .errors import NoEligibleCheckpointError, PromotionConflict, TrainResultsError

    args = build_parser().parse_args(argv)

    def fail(code: int, exc: BaseException, prefix: str = "") -> int:
        print(f"trainresults: {prefix}{_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return code

    try:
        return int(args.func(args))
    except NoEligibleCheckpointError as exc:
        return fail(EXIT_NONE_ELIGIBLE, exc)
    except PromotionConflict as exc:
        return fail(EXIT_CONFLICT, exc)
    except BrokenPipeError:  # `trainresults ... | head`: the reader left; not an error
        sys.stderr.close()
        return EXIT_OK
    except (TrainResultsError, ValueError, OSError, LookupError) as exc:
        return fail(EXIT_INPUT, exc)
    except KeyboardInterrupt:
        return fail(130, KeyboardInterrupt("interrupted"))
    except Exception as exc:  # noqa: BLE001 - a bug; still one line unless debugging
        if os.environ.get("TRAINRESULTS_DEBUG"):
            raise
        return fail(EXIT_INTERNAL, exc, f"internal error {type(exc).__name__}: ")


if __name__ == "__main__":
    sys.exit(main())
