"""Security properties that hold for the whole package, checked by reading its source."""

from __future__ import annotations

import os
import re

PACKAGE = os.path.join(os.path.dirname(__file__), "..", "..", "trainresults_dagster")


def _sources():
    for root, _dirs, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                with open(path) as fh:
                    yield path, fh.read()


def _hits(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{os.path.relpath(p, PACKAGE)}:{i + 1}: {line.strip()}"
            for p, text in _sources() for i, line in enumerate(text.splitlines()) if rx.search(line)]


def test_nothing_is_unpickled_or_evaluated():
    assert _hits(r"\b(c?[pP]ickle|cloudpickle|joblib|dill|marshal|shelve)\.(loads?|Unpickler)\b") == []
    assert _hits(r"^\s*import (pickle|cloudpickle|dill|joblib|shelve|marshal)\b") == []
    assert _hits(r"\b(eval|exec)\(") == []
    assert _hits(r"yaml\.(load|unsafe_load)\(") == []
    assert _hits(r"(read_pickle|torch\.load|np\.load\(.*allow_pickle=True)") == []


def test_tls_verification_is_never_disabled():
    assert _hits(r"verify\s*=\s*False|CERT_NONE|_create_unverified_context|check_hostname\s*=\s*False") == []


def test_no_module_level_ray_or_torch_import():
    offenders = []
    for path, text in _sources():
        if os.sep + "ray" + os.sep in path and path.endswith("recorder.py"):
            continue  # the ray extra's own module: imported only on demand
        for line in text.splitlines():
            if re.match(r"^(import|from) (ray|torch)\b", line):
                offenders.append(f"{os.path.relpath(path, PACKAGE)}: {line}")
    assert offenders == []
