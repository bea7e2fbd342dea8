"""prefect.yaml and the Kubernetes files, validated structurally (they cannot be applied here)."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_prefect_yaml_cron_and_manual_deployments():
    deps = _deployments()
    cron = deps["nightly-cron"]
    assert cron["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True,
                                  "slug": "every day at 02:00 UTC (cron 0 2 * * *)"}]  # the UI's card shows the slug
    assert deps["manual"]["schedules"] == []
    assert cron["work_pool"]["name"] == deps["manual"]["work_pool"]["name"] == "local-process"
    assert all(d["concurrency_limit"] == 1 for d in deps.values())  # one writer of the champion pointer
    env = cron["work_pool"]["job_variables"]["env"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert int(env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) == 30  # what the zombie automation expects
    assert deps["nightly-gpu"]["work_pool"]["job_variables"]["gpu_count"] >= 1


def test_entrypoints_load_and_parameters_match_the_flow():
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    for d in _deployments().values():
        flow = load_flow_from_entrypoint(str(ROOT / d["entrypoint"]))
        assert flow.name == "nightly"
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
