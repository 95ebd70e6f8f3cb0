"""A stateful property test of the registry against a simple model (hypothesis
``RuleBasedStateMachine``): register, promote with and without ``expected_version``,
rollback, and races between two clients (two ``Registry`` objects on the same base, threads
in one process), on a local folder and on the moto S3 server, where client A's requests go
through ``S3Proxy`` with injected faults (503/500, resets before the request, resets after the
server executed it so the answer is lost; everywhere, or only on the compare-and-set writes).

After every step, read through the other, fault-free client: the versions are the model's,
the history is a consistent chain (seq 1..n, each event's ``previous_version`` is the event
before's ``version``, rollbacks restore what the model says), the alias points where the
model says, and each operation that returned is there exactly once (nothing lost); an
operation that raised after its retries is there at most once (nothing doubled).

``make test`` runs a few examples per property (seconds); ``make stress`` many more.
Counts are printed (``-s``) and collected in ``TALLY``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from s3_proxy import S3Proxy, conditional_put

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import PromotionConflict, StorageError, VersionNotFoundError
from trainresults_dagster.registry.registry import Registry

MODEL = "m"
TALLY: Counter[str] = Counter()
_OPS = itertools.count(1)


@dataclass
class Event:
    version: int
    base_seq: int
    action: str
    reason: str


@dataclass
class Model:
    versions: list[str] = field(default_factory=list)  # op tag of each version, in order
    events: list[Event] = field(default_factory=list)

    @property
    def current(self) -> int | None:
        return self.events[-1].version if self.events else None

    def promote(self, version: int, reason: str) -> None:
        self.events.append(Event(version, len(self.events), "promote", reason))

    def rollback_target(self) -> Event | None:
        if not self.events or self.events[-1].base_seq < 1:
            return None
        return self.events[self.events[-1].base_seq - 1]


class RegistryMachine(RuleBasedStateMachine):
    """One example: a fresh registry base, two clients, a model."""

    def __init__(self, make_clients: Any, ckpt: str) -> None:
        super().__init__()
        self.a, self.b = make_clients()
        self.clients = {"a": self.a, "b": self.b}
        self.ckpt = ckpt
        self.model = Model()
        TALLY["examples"] += 1

    # ------------------------------------------------------------------ helpers
    def _tag(self) -> str:
        return f"op-{next(_OPS)}-{uuid.uuid4().hex[:6]}"

    def _events_with(self, reason: str) -> list[Any]:
        return [e for e in self.b.history(MODEL) if e.reason == reason or e.reason.endswith(reason)]

    def _reconcile_promote(self, tag: str) -> None:
        """An operation raised: it happened at most once; adopt what storage says."""
        found = self._events_with(tag)
        assert len(found) <= 1, f"promotion {tag} doubled: {found}"
        if found:
            self._adopt(found[0])
            TALLY["raised_but_applied"] += 1
        else:
            TALLY["raised_not_applied"] += 1

    def _adopt(self, e: Any) -> None:
        """Apply a move seen in storage to the model; the invariant then checks its fields."""
        if e.action == "promote":
            self.model.promote(e.version, e.reason)
            return
        target = self.model.rollback_target()
        assert target is not None and e.version == target.version, (e, target)
        self.model.events.append(Event(target.version, target.base_seq, "rollback", e.reason))

    def _register(self, client: Registry) -> str:
        tag = self._tag()
        try:
            version = client.register(MODEL, self.ckpt, metrics={"op": tag})
        except (StorageError, OSError):
            TALLY["ops_raised"] += 1
            tags = [v.metrics.get("op") for v in self.b.versions(MODEL)]
            assert tags.count(tag) <= 1, f"register {tag} doubled"
            if tag in tags:
                self.model.versions.append(tag)
            return tag
        self.model.versions.append(tag)
        assert version.version == len(self.model.versions), (version.version, self.model.versions)
        TALLY["ops_ok"] += 1
        return tag

    # ------------------------------------------------------------------ rules
    @rule(who=st.sampled_from("ab"))
    def register(self, who: str) -> None:
        self._register(self.clients[who])

    @precondition(lambda self: self.model.versions)
    @rule(who=st.sampled_from("ab"), pick=st.integers(0, 10**6),
          expected=st.sampled_from(["unchecked", "current", "stale", "unset"]))
    def promote(self, who: str, pick: int, expected: str) -> None:
        version = pick % len(self.model.versions) + 1
        current = self.model.current
        kwargs: dict[str, Any] = {}
        if expected == "current":
            kwargs["expected_version"] = current
        elif expected == "stale":
            kwargs["expected_version"] = (current or 0) + 1000
        elif expected == "unset":
            kwargs["expected_version"] = None
        tag = self._tag()
        should_conflict = "expected_version" in kwargs and kwargs["expected_version"] != current
        try:
            self.clients[who].promote(MODEL, version, reason=tag, **kwargs)
        except PromotionConflict:
            assert should_conflict, f"unexpected conflict promoting {version} with {kwargs}"
            assert not self._events_with(tag)
            TALLY["conflicts_expected"] += 1
            return
        except (StorageError, OSError):
            TALLY["ops_raised"] += 1
            self._reconcile_promote(tag)
            return
        assert not should_conflict, f"promotion with {kwargs} should have conflicted"
        self.model.promote(version, tag)
        TALLY["ops_ok"] += 1

    @rule(who=st.sampled_from("ab"))
    def promote_missing_version(self, who: str) -> None:
        with pytest.raises(VersionNotFoundError):
            self.clients[who].promote(MODEL, len(self.model.versions) + 5)

    @rule(who=st.sampled_from("ab"))
    def rollback(self, who: str) -> None:
        target = self.model.rollback_target()
        tag = self._tag()
        try:
            mv = self.clients[who].rollback(MODEL, reason=tag)
        except VersionNotFoundError:
            assert target is None, "rollback refused although there is an earlier champion"
            return
        except (StorageError, OSError):
            TALLY["ops_raised"] += 1
            self._reconcile_promote(tag)
            return
        assert target is not None, "rollback succeeded with nothing to roll back to"
        assert mv.version == target.version
        self.model.events.append(Event(target.version, target.base_seq, "rollback", tag))
        TALLY["ops_ok"] += 1

    @precondition(lambda self: self.model.versions)
    @rule(pa=st.integers(0, 10**6), pb=st.integers(0, 10**6), checked=st.booleans())
    def race(self, pa: int, pb: int, checked: bool) -> None:
        """Both clients promote at once; with ``expected_version`` exactly one wins."""
        n = len(self.model.versions)
        picks = {"a": pa % n + 1, "b": pb % n + 1}
        tags = {w: self._tag() for w in picks}
        current = self.model.current
        kwargs = {"expected_version": current} if checked else {}

        def go(who: str) -> str:
            try:
                self.clients[who].promote(MODEL, picks[who], reason=tags[who], **kwargs)
                return "ok"
            except PromotionConflict:
                return "conflict"
            except (StorageError, OSError):
                return "raised"

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcome = dict(zip(picks, pool.map(go, picks), strict=True))
        TALLY["races"] += 1
        seen = {w: self._events_with(tags[w]) for w in picks}
        for who, result in outcome.items():
            assert len(seen[who]) <= 1, f"{who}'s promotion doubled"
            if result == "ok":
                assert len(seen[who]) == 1, f"{who}'s promotion returned but is lost"
            if result == "conflict":
                assert checked and not seen[who], f"{who}: conflict without a race, or applied"
        if checked:
            # expected_version compares versions, not events: a winner that re-promoted the
            # current version leaves the other's expectation true, so both may win then.
            won = sorted((e for v in seen.values() for e in v), key=lambda e: e.seq)
            assert len(won) <= 1 or (len(won) == 2 and won[0].version == current), (
                f"two compare-and-sets both won: {won}"
            )
        for e in sorted((e for v in seen.values() for e in v), key=lambda e: e.seq):
            self._adopt(e)
        TALLY["ops_ok"] += sum(r == "ok" for r in outcome.values())
        TALLY["ops_raised"] += sum(r == "raised" for r in outcome.values())

    @rule()
    def race_register(self) -> None:
        """Both clients register at once: two distinct versions, each where it says it is.

        The threads return and are checked here, not one by one as in ``_register``: which
        commits first is the race, so a thread cannot know the model's count when it ends.
        """
        before = len(self.model.versions)
        tags = {"a": self._tag(), "b": self._tag()}

        def go(who: str) -> int | None:
            try:
                return self.clients[who].register(MODEL, self.ckpt, metrics={"op": tags[who]}).version
            except (StorageError, OSError):
                return None

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            got = dict(zip(tags, pool.map(go, tags), strict=True))
        TALLY["races"] += 1
        stored = [v.metrics.get("op") for v in self.b.versions(MODEL)]
        assert stored[:before] == self.model.versions, "a racing register rewrote older versions"
        ok = [v for v in got.values() if v is not None]
        assert len(set(ok)) == len(ok), f"two racing registers got the same version: {got}"
        for who, version in got.items():
            assert stored.count(tags[who]) <= 1, f"{who}'s register doubled"
            if version is None:
                TALLY["ops_raised"] += 1
                continue
            assert version > before and stored[version - 1] == tags[who], (who, version, stored)
            TALLY["ops_ok"] += 1
        assert sorted(stored[before:]) == sorted(t for t in tags.values() if t in stored)
        self.model.versions = stored

    # ------------------------------------------------------------------ invariants
    @invariant()
    def storage_matches_the_model(self) -> None:
        stored = [v.metrics.get("op") for v in self.b.versions(MODEL)]
        assert stored == self.model.versions, (stored, self.model.versions)
        history = self.b.history(MODEL)
        assert [e.seq for e in history] == list(range(1, len(history) + 1)), "gap in history"
        previous = None
        for e in history:
            assert e.previous_version == previous, f"event {e.seq} does not follow the one before"
            previous = e.version
        got = [(e.version, e.base_seq, e.action, e.reason) for e in history]
        want = [(m.version, m.base_seq, m.action, m.reason) for m in self.model.events]
        assert [g[:3] for g in got] == [w[:3] for w in want], (got, want)
        for g, w in zip(got, want, strict=True):
            assert g[3] == w[3] or g[3].endswith(w[3]), (g, w)
        champion = self.b.get(MODEL)
        assert (champion.version if champion else None) == self.model.current
        TALLY["invariant_checks"] += 1


def run_machine(make_clients: Any, ckpt: str, *, examples: int, steps: int) -> None:
    run_state_machine_as_test(
        lambda: RegistryMachine(make_clients, ckpt),
        settings=settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("stateful-ckpt")
    (root / "model.bin").write_bytes(os.urandom(2048))
    (root / ".metadata.json").write_text('{"epoch": 3}')
    return str(root)


def _report(name: str, before: Counter[str], faults: Counter[str] | None = None) -> None:
    done = TALLY - before
    line = ", ".join(f"{k}={v}" for k, v in sorted(done.items()))
    if faults is not None:
        line += f"; faults injected={sum(faults.values())} {dict(faults)}"
    print(f"\n[{name}] {line}")
    assert done["examples"] >= 1


# ---------------------------------------------------------------------------- local

def local_property(tmp_path_factory, ckpt, examples, steps):
    before = TALLY.copy()

    def make():
        base = str(tmp_path_factory.mktemp("reg"))
        return Registry(base), Registry(base)

    run_machine(make, ckpt, examples=examples, steps=steps)
    _report("local", before)


def test_registry_model_local(tmp_path_factory, ckpt):
    local_property(tmp_path_factory, ckpt, examples=20, steps=12)


@pytest.mark.stress
def test_registry_model_local_stress(tmp_path_factory, ckpt):
    local_property(tmp_path_factory, ckpt, examples=400, steps=30)


# ---------------------------------------------------------------------------- S3

FAULTS = ("slowdown", "internal", "reset", "reset_after")


def s3_property(moto, ckpt, *, examples, steps, rate, only_cas, seed):
    before = TALLY.copy()
    proxy = S3Proxy(moto.endpoint_url, fault_rate=rate, faults=FAULTS, seed=seed,
                    match=conditional_put if only_cas else None)
    bucket = moto.new_bucket("stateful")

    def settings_for(endpoint: str) -> storage.S3Settings:
        return storage.S3Settings(endpoint_url=endpoint, region_name=moto.region,
                                  aws_access_key_id=moto.access_key,
                                  aws_secret_access_key=moto.secret_key)

    def make():
        base = f"s3://{bucket}/{uuid.uuid4().hex[:10]}"
        return (Registry.open(base, settings_for(proxy.endpoint_url)),
                Registry.open(base, settings_for(moto.endpoint_url)))

    try:
        run_machine(make, ckpt, examples=examples, steps=steps)
    finally:
        proxy.stop()
    faults = Counter(proxy.stats["faults"])
    TALLY["faults_injected"] += sum(faults.values())
    _report(f"s3 rate={rate} only_cas={only_cas}", before, faults)


@pytest.mark.parametrize("rate, only_cas", [(0.03, False), (0.3, True)])
def test_registry_model_s3_with_faults(moto, ckpt, rate, only_cas):
    s3_property(moto, ckpt, examples=5, steps=10, rate=rate, only_cas=only_cas, seed=13)


@pytest.mark.stress
@pytest.mark.parametrize("rate, only_cas", [(0.05, False), (0.4, True)])
def test_registry_model_s3_with_faults_stress(moto, ckpt, rate, only_cas):
    s3_property(moto, ckpt, examples=80, steps=25, rate=rate, only_cas=only_cas, seed=29)
