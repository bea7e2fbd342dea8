"""prefect.yaml and the Kubernetes files, validated structurally (they cannot be applied here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

K8S = ROOT / "infra" / "k8s"


def _deployments() -> dict[str, dict]:
    """By ``flow/deployment`` name (flow = the entrypoint's function, as `prefect deploy --name` matches it)."""
    return {
        f"{d['entrypoint'].split(':')[-1].replace('_', '-')}/{d['name']}": d
        for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    }


def test_prefect_yaml_cron_and_manual_deployments():
    deps = _deployments()
    cron = deps["nightly/daily-0200-UTC"]
    assert cron["schedules"] == [
        {"cron": "0 2 * * *", "timezone": "UTC", "active": True, "slug": "every day at 02:00 UTC (cron 0 2 * * *)"}
    ]  # the UI's card shows the slug
    assert deps["nightly/manual"]["schedules"] == []
    assert cron["work_pool"]["name"] == deps["nightly/manual"]["work_pool"]["name"] == "local-process"
    nightly = [d for k, d in deps.items() if k.startswith("nightly/")]
    assert len(nightly) == 3 and all(d["concurrency_limit"] == 1 for d in nightly)  # one writer of the champion pointer
    env = cron["work_pool"]["job_variables"]["env"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) == 30  # what the zombie automation expects
    assert deps["nightly/daily-0200-UTC-gpu"]["work_pool"]["job_variables"]["gpu_count"] >= 1


def test_fan_out_deployments_one_thread_per_cell_and_gpu_variants():
    from infra.stack import LOCAL_DEPLOYMENTS

    deps = _deployments()
    for flow in ("study-cell", "search-trial"):
        one = "one-cell" if flow == "study-cell" else "one-trial"
        local, gpu = deps[f"{flow}/{one}-cpu"], deps[f"{flow}/{one}-gpu"]
        assert local["work_pool"]["name"] == "local-process" and f"{flow}/{one}-cpu" in LOCAL_DEPLOYMENTS
        assert local["work_pool"]["job_variables"]["env"]["OMP_NUM_THREADS"] == "1"
        assert "concurrency_limit" not in local  # N workers run N cells at once
        assert gpu["work_pool"]["name"] == "gpu-k8s" and gpu["work_pool"]["job_variables"]["gpu_count"] == 1


def test_names_say_what_and_scheduled_ones_when_in_which_time_zone():
    """The UI's deployment list shows names and "At 02:00 AM every day" (no time zone): names carry both."""
    from infra.stack import LOCAL_DEPLOYMENTS

    deps = _deployments()
    assert (
        len({d["name"] for d in deps.values() if d["work_pool"]["name"] == "local-process"})
        == len(LOCAL_DEPLOYMENTS)
        == 4
    )  # no two local deployments share a name
    for name, d in deps.items():
        for sched in d.get("schedules") or []:
            assert sched["timezone"] in d["name"], f"{name}: the schedule's time zone is not in its name"
            hour, minute = sched["cron"].split()[1], sched["cron"].split()[0]
            assert f"{int(hour):02d}{int(minute):02d}" in d["name"], f"{name}: the schedule's time is not in its name"
    # a name says what the deployment does, not only where it runs: no bare `gpu`, `local`, `cpu`
    assert not {d["name"] for d in deps.values()} & {"gpu", "cpu", "local", "default"}
    gpu = {k for k, d in deps.items() if d["work_pool"]["name"] == "gpu-k8s"}
    assert gpu == {"nightly/daily-0200-UTC-gpu", "study-cell/one-cell-gpu", "search-trial/one-trial-gpu"}
    assert set(LOCAL_DEPLOYMENTS) <= set(deps)


def test_entrypoints_load_and_parameters_match_the_flow():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    for name, d in _deployments().items():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert flow.name == name.split("/")[0], f"{name}: `prefect deploy --name {name}` would not find it"
        schema = parameter_schema(flow).model_dump()
        unknown = set(d["parameters"]) - set(schema["properties"])
        assert not unknown, f"{d['name']}: parameters the flow does not take: {unknown}"


def test_gpu_base_job_template_renders_gpu_requests():
    from prefect.utilities.templating import apply_values, find_placeholders

    tpl = json.loads((K8S / "gpu-work-pool-template.json").read_text())
    props = tpl["variables"]["properties"]
    used = {p.name for p in find_placeholders(tpl["job_configuration"])}
    assert used <= set(props), f"placeholders without a variable: {used - set(props)}"
    values = {k: v["default"] for k, v in props.items() if "default" in v}
    values.update(gpu_count=2, name="nightly-abc", command="prefect flow-run execute", labels={"a": "b"})
    job = apply_values(tpl["job_configuration"], values)["job_manifest"]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["name"] == "prefect-job" and pod["restartPolicy"] == "Never"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 2 and c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert values["env"]["DO_NOT_TRACK"] == "1"


def test_worker_helm_values_point_at_the_gpu_pool():
    v = yaml.safe_load((K8S / "prefect-worker-values.yaml").read_text())["worker"]
    assert v["config"]["type"] == "kubernetes" and v["config"]["workPool"] == "gpu-k8s"
    assert v["config"]["baseJobTemplate"]["existingConfigMapName"]
    assert v["image"]["prefectTag"].startswith("3.8.8")
    assert {e["name"]: e["value"] for e in v["extraEnvVars"]}["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert v["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")


def test_triton_manifest_serves_from_s3_on_a_gpu():
    docs = {d["kind"]: d for d in yaml.safe_load_all((K8S / "triton.yaml").read_text())}
    dep, svc = docs["Deployment"], docs["Service"]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    c = next(c for c in pod["containers"] if c["name"] == "triton")
    assert any(a.startswith("--model-repository=s3://") for a in c["args"])
    assert "--model-control-mode=poll" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {"secretRef": {"name": "alloynet-s3"}} in c["envFrom"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)


# Kubernetes API schemas bundled by kubernetes-validate (PyPI; installed by `make venv`, nothing fetched at
# test time). Strict: a field the API does not know (a typo) fails, not only a wrong type.
K8S_VERSION = "1.33.0"


MANIFESTS = (
    "triton.yaml",
    "work-pvc.yaml",
    "flow-runs.yaml",
    "postgres.yaml",
    "study-gpu-launcher.yaml",
    "search-launcher.yaml",
)


def _k8s_objects() -> list[tuple[str, dict]]:
    from prefect.utilities.templating import apply_values

    objs = [(f"{f}#{d['kind']}", d) for f in MANIFESTS for d in yaml.safe_load_all((K8S / f).read_text()) if d]
    tpl = json.loads((K8S / "gpu-work-pool-template.json").read_text())
    values = {k: v["default"] for k, v in tpl["variables"]["properties"].items() if "default" in v}
    values.update(
        name="study-cell-abc", command="prefect flow-run execute", labels={"app": "alloynet"}, image="alloynet:latest"
    )
    objs.append(
        (
            "gpu-work-pool-template.json#job_manifest",
            _as_the_worker_submits(apply_values(tpl["job_configuration"], values)["job_manifest"]),
        )
    )
    return objs


def _as_the_worker_submits(job: dict) -> dict:
    """The two rewrites prefect-kubernetes' worker makes to the rendered template before it calls the API
    (KubernetesWorkerJobConfiguration.prepare_for_flow_run): the ``env`` mapping becomes a list of
    name/value pairs and a string ``args`` is split like a shell command."""
    import shlex

    c = job["spec"]["template"]["spec"]["containers"][0]
    if isinstance(c.get("env"), dict):
        c["env"] = [{"name": k, "value": v} for k, v in c["env"].items()]
    if isinstance(c.get("args"), str):
        c["args"] = shlex.split(c["args"])
    return job


def test_kubernetes_manifests_validate_against_the_api_schemas():
    import kubernetes_validate

    objs = _k8s_objects()
    assert {d["kind"] for _, d in objs} == {
        "Deployment",
        "Service",
        "Job",
        "PersistentVolumeClaim",
        "ServiceAccount",
        "ConfigMap",
        "StatefulSet",
    }
    job = next(d for w, d in objs if w == "gpu-work-pool-template.json#job_manifest")
    claim = next(d for _, d in objs if d["kind"] == "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # cells in separate pods share the work dir
    for where, doc in objs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{where}: {'.'.join(map(str, e.path))}: {e.message}") from None


def test_the_schema_check_catches_a_typo_and_a_wrong_type():
    import copy

    import kubernetes_validate

    _, dep = next(o for o in _k8s_objects() if o[1]["kind"] == "Deployment")
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["containers"][0]["resoures"] = {}
    wrong = copy.deepcopy(dep)
    wrong["spec"]["replicas"] = "two"
    for bad in (typo, wrong):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# ---- the stack on Kubernetes, as the real worker renders it ------------------------------------------------
def _by_kind(name: str) -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all((K8S / name).read_text()) if d}


def _rendered_by_the_kubernetes_worker(**values) -> dict:
    """The Job manifest prefect-kubernetes' own worker code builds for a flow run from our pool template."""
    import uuid

    import anyio
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    tpl = json.loads((K8S / "gpu-work-pool-template.json").read_text())
    config = anyio.run(lambda: KubernetesWorkerJobConfiguration.from_template_and_values(tpl, values))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="nightly-night"))
    return config.job_manifest


def test_flow_run_pods_get_the_secrets_the_volume_and_an_account_that_exists(prefect_harness):
    import kubernetes_validate

    job = _rendered_by_the_kubernetes_worker(gpu_count=2)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    refs = {k: e["valueFrom"]["secretKeyRef"] for k, e in env.items() if "valueFrom" in e}
    assert refs["ALLOYNET_OPTUNA_STORAGE"] == {"name": "alloynet-optuna", "key": "ALLOYNET_OPTUNA_STORAGE"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert refs[key] == {"name": "alloynet-s3", "key": key}  # the same Secret Triton reads (triton.yaml)
    assert {"secretRef": {"name": refs["AWS_ACCESS_KEY_ID"]["name"]}} in next(
        x for x in _by_kind("triton.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"]
    )["envFrom"]
    assert env["DO_NOT_TRACK"]["value"] == "1" and "PREFECT__FLOW_RUN_ID" in env  # the worker's own variables
    assert not any("password" in str(e.get("value", "")).lower() for e in c["env"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["image"] != "registry.example.com/alloynet/worker:latest" and ":" in c["image"]
    account = _by_kind("flow-runs.yaml")["ServiceAccount"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "alloynet-flow-runs"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert "USER 10001" in (ROOT / "docker" / "worker.Dockerfile").read_text()  # the uid the pod runs as
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    study = yaml.safe_load((ROOT / "configs" / "study-gpu.yaml").read_text())
    assert Path(study["work_dir"]).is_absolute() and study["work_dir"].startswith(mounts["work"] + "/")


def test_the_server_runs_on_the_stacks_postgres_and_the_worker_finds_it():
    server = yaml.safe_load((K8S / "prefect-server-values.yaml").read_text())
    worker = yaml.safe_load((K8S / "prefect-worker-values.yaml").read_text())
    assert server["postgresql"]["enabled"] is False and server["sqlite"]["enabled"] is False
    assert server["secret"] == {"create": False, "name": "prefect-server-db"}
    assert server["server"]["image"]["prefectTag"].startswith("3.8.8")
    host = worker["worker"]["selfHostedServerApiConfig"]["apiUrl"].split("//")[1].split(".")[0]
    assert host == server["fullnameOverride"]  # the chart names the Service after fullnameOverride
    assert worker["role"]["create"] is True and worker["serviceAccount"]["create"] is True
    pg = _by_kind("postgres.yaml")
    container = pg["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_DB"]["value"] == "prefect" and "valueFrom" in env["POSTGRES_PASSWORD"]
    assert "CREATE DATABASE optuna" in pg["ConfigMap"]["data"]["10-optuna.sql"]
    assert pg["Service"]["metadata"]["name"] == "alloynet-postgres"
    launcher = _by_kind("study-gpu-launcher.yaml")["Job"]["spec"]["template"]["spec"]
    args = launcher["containers"][0]["args"]
    cell = "study-cell/one-cell-gpu"
    assert args[args.index("--deployment") + 1] == cell and cell in _deployments()
    assert (
        args[args.index("--work-dir") + 1]
        == yaml.safe_load((ROOT / "configs" / "study-gpu.yaml").read_text())["work_dir"]
    )
    search = _by_kind("search-launcher.yaml")["Job"]["spec"]["template"]["spec"]["containers"][0]
    args = search["args"]
    trial = "search-trial/one-trial-gpu"
    assert args[args.index("--deployment") + 1] == trial and trial in _deployments()
    assert args[args.index("--storage") + 1] == "env:ALLOYNET_OPTUNA_STORAGE"
    assert {e["name"]: e for e in search["env"]}["ALLOYNET_OPTUNA_STORAGE"]["valueFrom"]["secretKeyRef"] == {
        "name": "alloynet-optuna",
        "key": "ALLOYNET_OPTUNA_STORAGE",
    }


def test_cluster_doc_creates_every_secret_and_applies_every_file_the_stack_needs():
    doc = (ROOT / "docs" / "cluster.md").read_text()
    for name in (
        *MANIFESTS,
        "prefect-server-values.yaml",
        "prefect-worker-values.yaml",
        "gpu-work-pool-template.json",
        "docker/worker.Dockerfile",
    ):
        assert name in doc, f"docs/cluster.md never uses {name}"
    for secret in ("alloynet-postgres", "prefect-server-db", "alloynet-optuna", "alloynet-s3"):
        assert f"create secret generic {secret}" in doc, f"docs/cluster.md never creates the Secret {secret}"
