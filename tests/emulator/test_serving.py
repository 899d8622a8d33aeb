"""ModelServer scenarios: the real operator against the emulator, the test playing the ReplicaSet controller and kubelet."""

from __future__ import annotations

from emulator.world import ReplicaSetRole, World, eventually, stays

MS = "ModelServer"
TJ = "TrainingJob"
V1 = "pvc://mlvisor-models/default/iris/v1/"
V2 = "pvc://mlvisor-models/default/iris/v2/"
ANNOTATION = "mlvisor.dev/model-uri"


def server_spec(uri: str | None = None, job: str | None = None, **more):
    model = {"uri": uri} if uri else {"trainingJobRef": {"name": job}}
    return {"model": model, "replicas": 1, "supervision": {"maxRestarts": 2, "periodSeconds": 300, "onExhausted": "Rollback"}, **more}


def serving(world: World, rs: ReplicaSetRole, pod: str, uri: str) -> None:
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == uri, what=f"Deployment rolling out {uri}")
    rs.start_pod(pod)
    rs.set_status(replicas=1, ready=1)


def test_a_server_serves_a_uri_and_reports_ready(world: World, operator) -> None:
    world.create(MS, "iris", server_spec(V1))
    deployment = eventually(lambda: world.deployment("iris"), what="the Deployment")
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (MS, "iris", True)
    service = world.service("iris")
    assert service["metadata"]["ownerReferences"][0]["uid"] == world.get(MS, "iris")["metadata"]["uid"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"].startswith("/v2/health")
    assert container["livenessProbe"]["httpGet"]["path"].startswith("/v2/health")

    rs = ReplicaSetRole(world, "iris")
    serving(world, rs, "iris-a", V1)
    world.wait_condition(MS, "iris", "Ready")
    status = world.wait_phase(MS, "iris", "Ready")
    assert status["modelVersion"] == "v1"
    assert status["url"] == "http://iris.default.svc:80/v2/models/iris"
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert status["observedGeneration"] == 1
    eventually(lambda: world.status(MS, "iris").get("lastGoodModelVersion") == "v1", what="v1 recorded as good")


def test_a_server_whose_pods_keep_restarting_rolls_back(world: World, operator) -> None:
    world.create(MS, "iris", server_spec(V1))
    rs = ReplicaSetRole(world, "iris")
    eventually(lambda: world.deployment("iris"), what="the Deployment")
    serving(world, rs, "iris-v1", V1)
    eventually(lambda: world.status(MS, "iris").get("lastGoodModelVersion") == "v1", what="v1 Ready")

    world.patch_spec(MS, "iris", {"model": {"uri": V2}})
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == V2, what="rolling out v2")
    world.wait_event("iris", "Deploying")
    rs.start_pod("iris-v2", ready=False)
    for count in (1, 2, 3):  # maxRestarts 2: the 3rd restart in the window escalates
        rs.crash("iris-v2", count)
        eventually(lambda count=count: world.status(MS, "iris")["supervision"].get("totalRestarts", 0) >= count or
                   world.status(MS, "iris")["phase"] == "RolledBack", what=f"restart {count} counted")

    rolled = world.wait_condition(MS, "iris", "RolledBack")
    assert "v2" in rolled["message"]
    status = world.wait_phase(MS, "iris", "RolledBack")
    assert status["modelVersion"] == "v1" and status["lastGoodModelVersion"] == "v1"
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == V1, what="Deployment back on v1")
    world.wait_event("iris", "RolledBack")
    eventually(lambda: operator.metric("mlvisor_rollbacks_total") == 1, what="rollbacks metric")
    stays(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == V1, 1.0, "v2 is not deployed again")


def test_a_server_follows_its_training_job(world: World, operator) -> None:
    world.create(MS, "iris", server_spec(job="iris"))
    world.wait_phase(MS, "iris", "Pending")
    assert not world.exists("/apis/apps/v1/namespaces/default/deployments/iris")

    world.create(TJ, "iris", {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.svm.SVC"}})
    world.wait_pod("iris-worker-0-1")
    world.exit_pod("iris-worker-0-1", 0)
    model = world.wait_phase(TJ, "iris", "Succeeded")["model"]

    # well before the planner's own 15 s re-check: the job's status event re-reconciles the server
    deployment = eventually(lambda: world.deployment("iris"), timeout=5, what="the Deployment after the job succeeded")
    assert deployment["spec"]["template"]["metadata"]["annotations"][ANNOTATION] == model["uri"]
    eventually(lambda: world.status(MS, "iris").get("modelVersion") == model["version"], timeout=5, what="modelVersion")


def test_a_file_uri_is_invalid_on_kubernetes_until_fixed(world: World, operator) -> None:
    world.create(MS, "local", server_spec("file:///models/iris/v1/"))
    failed = world.wait_condition(MS, "local", "Failed", reason="InvalidSpec")
    assert "spec.model.uri" in failed["message"] and "file://" in failed["message"]
    assert world.wait_event("local", "InvalidSpec")["type"] == "Warning"
    stays(lambda: not world.exists("/apis/apps/v1/namespaces/default/deployments/local")
          and world.event_reasons("local").count("InvalidSpec") == 1, 1.0, "no Deployment, one Warning")

    world.patch_spec(MS, "local", {"model": {"uri": V1}})
    eventually(lambda: world.deployment("local"), what="the Deployment once the spec is fixed")


def test_a_uri_without_a_version_directory_is_invalid_spec_not_a_retry_loop(world: World, operator) -> None:
    # Found by the fuzz tier on the real API server: "pvc://0/" passed the old pattern and the
    # reconcile raised and retried for ever, with nothing in status. (The CRD refuses it now;
    # the emulator has no schema, so this checks the operator's own guard.)
    world.create(MS, "noversion", server_spec("pvc://0/"))
    failed = world.wait_condition(MS, "noversion", "Failed", reason="InvalidSpec")
    assert "spec.model.uri" in failed["message"]
    world.patch_spec(MS, "noversion", {"model": {"uri": V1}})
    eventually(lambda: world.deployment("noversion"), what="the Deployment once the spec is fixed")


def test_deleting_a_server_removes_its_deployment_and_service(world: World, operator) -> None:
    world.create(MS, "bye", server_spec(V1))
    eventually(lambda: world.deployment("bye") and world.service("bye"), what="children")
    world.delete(MS, "bye")
    eventually(
        lambda: not world.exists("/apis/apps/v1/namespaces/default/deployments/bye")
        and not world.exists("/api/v1/namespaces/default/services/bye"),
        what="children garbage-collected",
    )


def test_a_server_that_cannot_load_its_model_rolls_back_on_its_first_exit(world: World, operator) -> None:
    said = "cannot load the model: /models/default/iris/v2/model.skops is corrupted or truncated"
    world.create(MS, "iris", server_spec(V1, supervision={"maxRestarts": 5, "periodSeconds": 300}))
    rs = ReplicaSetRole(world, "iris")
    eventually(lambda: world.deployment("iris"), what="the Deployment")
    serving(world, rs, "iris-v1", V1)
    eventually(lambda: world.status(MS, "iris").get("lastGoodModelVersion") == "v1", what="v1 Ready")
    world.patch_spec(MS, "iris", {"model": {"uri": V2}})
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == V2, what="rolling out v2")
    rs.start_pod("iris-v2", ready=False)
    rs.crash("iris-v2", 1, exit_code=4, message=said)  # one exit: maxRestarts 5 is not waited out
    rolled = world.wait_condition(MS, "iris", "RolledBack", reason="ModelUnloadable")
    assert ("server pod iris-v2 cannot load model version v2: /models/default/iris/v2/model.skops is corrupted or "
            "truncated") in rolled["message"]
    status = world.status(MS, "iris")
    assert status["modelVersion"] == "v1" and status["supervision"]["lastFailure"]["message"] == said
    assert "corrupted or truncated" in world.wait_event("iris", "RolledBack")["message"]
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == V1, what="Deployment back on v1")


def test_a_server_whose_training_job_does_not_exist_says_so_until_it_does(world: World, operator) -> None:
    def ready_because(reason: str):
        def probe():
            c = world.condition(MS, "lonely", "Ready")
            return c if c is not None and c["status"] == "False" and c["reason"] == reason else None
        return probe

    world.create(MS, "lonely", server_spec(job="nope"))
    ready = eventually(ready_because("TrainingJobNotFound"), what="Ready=False TrainingJobNotFound")
    assert "there is no TrainingJob default/nope" in ready["message"]
    assert world.wait_event("lonely", "TrainingJobNotFound")["type"] == "Warning"
    world.create(TJ, "nope", {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.svm.SVC"}})
    # the job's events re-reconcile the server (well before its 15 s re-check)
    eventually(ready_because("WaitingForModel"), timeout=5, what="Ready=False WaitingForModel once the job exists")


def test_a_startup_probe_kill_names_the_startup_timeout_and_what_the_server_waited_for_once(world: World, operator) -> None:
    """The kubelet stopped a server that was never ready (exit 143); the server wrote what it was
    waiting for. Every restart is counted, the reason is said in full once, and the Ready
    condition says it while the server is down."""
    said = "not ready: waiting for the model: artifact directory /models/default/iris/v1 does not exist"
    world.create(MS, "slow", server_spec(V1, startupTimeoutSeconds=30, supervision={"maxRestarts": 5, "periodSeconds": 300}))
    rs = ReplicaSetRole(world, "slow")
    eventually(lambda: world.deployment("slow"), what="the Deployment")
    rs.start_pod("slow-a", ready=False)
    words = ("server pod slow-a was not ready within spec.startupTimeoutSeconds (30 s) and was restarted: "
             "it was waiting for the model: artifact directory /models/default/iris/v1 does not exist")
    for count in (1, 2):
        rs.crash("slow-a", count, exit_code=143, message=said)
        eventually(lambda count=count: world.status(MS, "slow")["supervision"].get("totalRestarts", 0) >= count,
                   what=f"restart {count} counted")
    messages = eventually(lambda: (m := sorted(e["message"] for e in world.events("slow") if e["reason"] == "ServerRestarted"))
                          and len(m) == 2 and m, what="two ServerRestarted events")
    assert messages == sorted([
        f"{words}; restart #1, 1 restarts within 300s, maxRestarts is 5",
        "server pod slow-a was restarted again for the same reason (restart #2); 2 restarts within 300s, maxRestarts is 5",
    ])
    status = world.status(MS, "slow")
    assert status["supervision"]["lastFailure"]["message"] == said
    ready = world.condition(MS, "slow", "Ready")
    assert ready["status"] == "False" and ready["message"] == (
        f"0/1 replicas ready on model version v1; 2 restarts within 300s, the last: {words}"
    )
