"""WebhookTarget and WebhookAlertSink share one configuration: positional (url, secret) as in
the contract, EnvVar URLs checked at run time, bad schemes refused at configuration."""

from __future__ import annotations

import dagster as dg
import pytest

import trainresults_dagster as trd


@pytest.mark.parametrize("cls", [trd.WebhookTarget, trd.WebhookAlertSink])
def test_positional_and_env_var_configuration(cls, monkeypatch):
    resource = cls("https://hooks.example.com/x", "s3cr3t")
    assert resource.url == "https://hooks.example.com/x" and resource.secret == "s3cr3t"
    deferred = cls(url=dg.EnvVar("HOOK_URL"))  # checked once Dagster resolves it
    monkeypatch.setenv("HOOK_URL", "http://127.0.0.1:9/hook")
    assert deferred.get_resource_definition() is not None
    with pytest.raises(Exception, match="http:// or https://"):
        cls("ftp://hooks.example.com/x")
