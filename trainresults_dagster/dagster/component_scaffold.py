"""``dg scaffold defs trainresults_dagster.components.TrainingPipeline <folder>``.

Writes a ``defs.yaml`` that loads and runs as written (it trains the example model on
generated data, on a local Ray or the one ``RAY_ADDRESS`` names), with a comment on every
section and the optional ones (inference, serving, alert webhook, S3) commented out.
``--format python`` writes a ``component.py`` building the same pipeline in Python.
"""

import re

import dagster as dg
from pydantic import BaseModel, Field

_YAML = """\
# A Ray Train pipeline: train -> best checkpoint -> gated champion (-> inference, serving),
# with failure sensors and a retraining schedule. `dg check defs` checks this file and
# `dg list defs` shows what it builds:
#   assets    {name}_trained_model, {name}_best_checkpoint, {name}_champion
#             (blocking check promotion_gate: nothing downstream runs on a rejected model)
#   sensors   {name}_failed_ray_runs, {name}_training_failures
#   schedule  {name}_retraining (job {name}_retrain)
type: {type_name}

attributes:
  # Prefix of every asset, job, sensor and schedule; also the model's name in the registry.
  name: {name}

  training:
    # The training function, 'package.module:function'. It returns a ray.train.Result, a
    # TrainResult or a trainer (run with trd.fit: a failed run keeps its checkpoints).
    # It may take `request` (request.run_config() puts the run where the sensor looks) and
    # `context`. This one trains a small logistic regression on generated data.
    entrypoint: trainresults_dagster.examples.training:train
    # Keyword arguments for it, checked against its signature when the code loads.
    params:
      epochs: 3
      num_workers: 2
    # Upstream assets the training reads: they run first and join the retraining job.
    # deps: [training_data]

  storage:
    # Root of everything the pipeline writes (ray/ runs, results, values, registry,
    # predictions): an absolute folder, s3://bucket/prefix, gs://bucket/prefix or
    # abfs://container/prefix.
    base_path: "{{{{ env('TRAINRESULTS_STORAGE', '~/.trainresults') }}}}"
    # checkpoints: copy   # keep a copy after Ray's num_to_keep or a lifecycle rule deletes them
    # Without `s3`, s3:// storage uses the default AWS chain and the AWS_* variables.
    # Credentials are given as variable NAMES, never as values:
    # s3:
    #   endpoint_url: http://localhost:9000
    #   region_name: us-east-1
    #   access_key_id_env: MINIO_ACCESS_KEY
    #   secret_access_key_env: MINIO_SECRET_KEY
    # Without `gcs`, gs:// uses Application Default Credentials (workload identity on GKE);
    # without `azure`, abfs:// uses AZURE_STORAGE_* or DefaultAzureCredential:
    # gcs: {{project_id: my-project}}
    # azure: {{account_name: mlstore, connection_string_env: AZURE_STORAGE_CONNECTION_STRING}}

  selection:
    # The run's best checkpoint by this metric (NaN, inf and missing values never win).
    metric: val_loss
    mode: min

  promotion:
    # The candidate becomes `alias` only if it beats the current one by min_improvement
    # (in `selection.metric`) and stays within every threshold ([low, high], null = none).
    alias: champion
    min_improvement: 0.001
    thresholds:
      val_accuracy: [0.7, null]

  # Batch inference with the champion over a Parquet dataset:
  # inference:
  #   predictor: trainresults_dagster.examples.model:Predictor
  #   input_uri: /data/to-score
  #   engine: local            # or ray (Ray Data map_batches)

  # Hand the champion to serving: a signed webhook (variable names) ...
  # serving:
  #   webhook:
  #     url_env: TRAINRESULTS_WEBHOOK_URL
  #     secret_env: TRAINRESULTS_WEBHOOK_SECRET
  # ... or a Ray Serve deployment:
  #   ray_serve: {{app_name: {name}, deployment_name: Model, address: "http://head:8265"}}

  alerts:
    # Where alerts of failed Ray runs (under <base_path>/ray) and failed training steps go;
    # without a webhook they go to the sensor's log.
    # webhook:
    #   url_env: TRAINRESULTS_ALERT_URL
    #   secret_env: TRAINRESULTS_ALERT_SECRET
    failed_run_sensor: true
    training_failure_sensor: true
    # running: true           # sensors start stopped, as every Dagster sensor

  schedule:
    # Retrain Mondays 03:00 UTC. Starts stopped; `running: true` to start it with the daemon.
    cron: "0 3 * * 1"
"""

_PYTHON = '''\
"""The {name} training pipeline, built in Python with the same component as defs.yaml."""

import dagster as dg
from {module} import {cls}


@dg.component_instance
def load(context: dg.ComponentLoadContext) -> {cls}:
    return {cls}.resolve_from_dict({{
        "name": "{name}",
        "training": {{
            "entrypoint": "trainresults_dagster.examples.training:train",
            "params": {{"epochs": 3, "num_workers": 2}},
        }},
        "storage": {{"base_path": "{{{{ env('TRAINRESULTS_STORAGE', '~/.trainresults') }}}}"}},
        "selection": {{"metric": "val_loss", "mode": "min"}},
        "promotion": {{"min_improvement": 0.001, "thresholds": {{"val_accuracy": [0.7, None]}}}},
        "schedule": {{"cron": "0 3 * * 1"}},
    }})
'''


class TrainingPipelineScaffoldParams(BaseModel):
    name: str | None = Field(
        default=None,
        description="Pipeline name (default: the folder's name, with '-' as '_').",
    )


def pipeline_name(folder: str) -> str:
    """A Dagster-safe name from a folder name: ``my-model`` -> ``my_model``."""
    name = re.sub(r"\W", "_", folder).strip("_") or "pipeline"
    return f"p_{name}" if name[0].isdigit() else name


class TrainingPipelineScaffolder(dg.Scaffolder[TrainingPipelineScaffoldParams]):
    @classmethod
    def get_scaffold_params(cls) -> type[TrainingPipelineScaffoldParams]:
        return TrainingPipelineScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[TrainingPipelineScaffoldParams]) -> None:
        params = request.params
        name = (params.name if params else None) or pipeline_name(request.target_path.name)
        if request.scaffold_format == "python":
            module, _, cls = request.type_name.rpartition(".")
            text = _PYTHON.format(name=name, module=module, cls=cls)
            (request.target_path / "component.py").write_text(text, encoding="utf-8")
            return
        text = _YAML.format(name=name, type_name=request.type_name)
        if request.append:
            with open(request.target_path, "a", encoding="utf-8") as fh:
                fh.write("---\n" + text)
            return
        (request.target_path / "defs.yaml").write_text(text, encoding="utf-8")
