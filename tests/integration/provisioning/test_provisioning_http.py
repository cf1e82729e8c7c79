"""Provisioning through the HTTP API, with the relay, the `instance.requested` consumer and the
saga runner running in-process on the sim driver: lifecycles, events (validated against the
AsyncAPI contract) in order, conflicts, tenant isolation, failures and their clean-up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from provisioning_support import Backdoor, Tenant, assert_problem, check_no_leaks, wait_for

pytestmark = pytest.mark.postgres

CREATED = ["instance.requested", "allocation.claimed", "pending→provisioning", "provisioning→running"]


def _running(tenant: Tenant, **kwargs: Any) -> dict[str, Any]:
    launch = tenant.launch(**kwargs)
    assert tenant.finished(launch["action"]["id"])["status"] == "succeeded"
    return tenant.instance(launch["instance"]["id"])


def test_create_answers_pending_and_runs_to_running(tenant: Tenant, backdoor: Backdoor) -> None:
    launch = tenant.launch(name="web-1", instance_type="cpu-2")
    instance, action = launch["instance"], launch["action"]
    assert instance["state"] == "pending" and instance["locked"] is True
    assert instance["zone"] is None and instance["launched_at"] is None and instance["terminated_at"] is None
    assert (instance["vcpus"], instance["memory_mb"], instance["disk_gb"], instance["gpus"]) == (2, 4096, 50, 0)
    assert (instance["price_per_hour"], instance["currency"], instance["gpu_model"]) == (3, "USD", None)
    assert action["type"] == "create" and action["status"] == "queued" and action["instance_id"] == instance["id"]
    assert action["progress"] == 0 and action["error"] is None

    done = tenant.finished(action["id"])
    assert done["status"] == "succeeded" and done["progress"] == 100 and done["error"] is None
    assert done["started_at"] is not None and done["completed_at"] >= done["started_at"]
    running = tenant.instance(instance["id"])
    assert running["state"] == "running" and running["locked"] is False and running["state_reason"] is None
    assert running["zone"].startswith("fra1-") and running["launched_at"] is not None

    assert backdoor.kinds(instance["id"]) == [*CREATED, "instance.running", "action.completed"]
    [requested] = backdoor.events("instance.requested", about=instance["id"])
    assert requested["organization_id"] == tenant.organization_id
    assert requested["data"] == {
        "instance_id": instance["id"],
        "action_id": action["id"],
        "name": "web-1",
        "region": "fra1",
        "instance_type": "cpu-2",
        "image": "ubuntu-24.04",
        "vcpus": 2,
        "memory_mb": 4096,
        "disk_gb": 50,
        "gpus": 0,
        "price_per_hour": 3,
        "currency": "USD",
    }
    [claimed] = backdoor.events("allocation.claimed", about=instance["id"])
    [up] = backdoor.events("instance.running", about=instance["id"])
    assert up["data"]["host_id"] == claimed["data"]["host_id"] and up["data"]["zone"] == running["zone"]
    state_changes = backdoor.events("instance.state_changed", about=instance["id"])
    assert {e["data"]["action_id"] for e in state_changes} == {action["id"]}


def test_stop_start_reboot_terminate(tenant: Tenant, backdoor: Backdoor) -> None:
    instance = _running(tenant)
    iid = instance["id"]

    stop = tenant.act(iid, "stop")
    assert stop.status_code == 202, stop.text
    assert stop.json()["type"] == "stop" and tenant.instance(iid)["state"] in ("stopping", "stopped")
    assert tenant.finished(stop.json()["id"])["status"] == "succeeded"
    assert tenant.instance(iid)["state"] == "stopped"
    assert backdoor.allocation(iid) is not None, "a stopped instance keeps its capacity"

    start = tenant.act(iid, "start")
    assert start.status_code == 202 and tenant.finished(start.json()["id"])["status"] == "succeeded"
    assert tenant.instance(iid)["state"] == "running"

    reboot = tenant.act(iid, "reboot")
    assert reboot.status_code == 202 and tenant.finished(reboot.json()["id"])["status"] == "succeeded"
    assert tenant.instance(iid)["state"] == "running"

    terminate = tenant.terminate(iid)
    assert terminate.status_code == 202, terminate.text
    assert terminate.json()["type"] == "terminate"
    assert tenant.finished(terminate.json()["id"])["status"] == "succeeded"
    gone = tenant.instance(iid)
    assert gone["state"] == "terminated" and gone["terminated_at"] is not None and gone["locked"] is False
    assert backdoor.allocation(iid) is None

    assert backdoor.kinds(iid) == [
        *CREATED,
        "instance.running",
        "action.completed",
        "running→stopping",
        "stopping→stopped",
        "instance.stopped",
        "action.completed",
        "stopped→starting",
        "starting→running",
        "instance.running",
        "action.completed",
        "running→rebooting",
        "rebooting→running",
        "instance.running",
        "action.completed",
        "running→terminating",
        "allocation.released",
        "terminating→terminated",
        "instance.terminated",
        "action.completed",
    ]
    [released] = backdoor.events("allocation.released", about=iid)
    assert released["data"]["reason"] == "terminated"

    actions = tenant.get(f"/v1/instances/{iid}/actions", limit=2)
    assert actions.status_code == 200
    page = actions.json()
    assert [a["type"] for a in page["data"]] == ["terminate", "reboot"] and page["next_cursor"]
    rest = tenant.get(f"/v1/instances/{iid}/actions", limit=10, cursor=page["next_cursor"]).json()
    assert [a["type"] for a in rest["data"]] == ["start", "stop", "create"] and rest["next_cursor"] is None
    assert all(a["status"] == "succeeded" for a in page["data"] + rest["data"])


def test_terminate_is_idempotent(tenant: Tenant, backdoor: Backdoor) -> None:
    iid = _running(tenant)["id"]
    first = tenant.terminate(iid)
    again = tenant.terminate(iid)  # terminating (or already terminated): the same action
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    tenant.finished(first.json()["id"])
    after = tenant.terminate(iid)
    assert after.status_code == 202 and after.json()["id"] == first.json()["id"]
    assert after.json()["status"] == "succeeded"
    assert [e["type"] for e in backdoor.events("instance.terminated", "allocation.released", about=iid)] == [
        "allocation.released",
        "instance.terminated",
    ]


def test_one_action_at_a_time_resource_locked(
    make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant]
) -> None:
    tenant = make_tenant(make_client(sim_delay_ms=60_000))  # the create stays in `provisioning`
    launch = tenant.launch()
    iid = launch["instance"]["id"]
    wait_for(lambda: tenant.instance(iid)["state"] == "provisioning")
    for response in (tenant.act(iid, "stop"), tenant.act(iid, "reboot"), tenant.terminate(iid)):
        body = assert_problem(response, 409, "resource-locked")
        assert launch["action"]["id"] in body["detail"] and "create" in body["detail"]
    assert tenant.action(launch["action"]["id"])["status"] == "running"
    assert tenant.instance(iid)["locked"] is True


def test_an_action_the_state_does_not_allow_is_invalid_state(tenant: Tenant) -> None:
    iid = _running(tenant)["id"]
    body = assert_problem(tenant.act(iid, "start"), 409, "invalid-state")
    assert "is running" in body["detail"] and "stop, reboot, terminate" in body["detail"]
    tenant.finished(tenant.terminate(iid).json()["id"])
    body = assert_problem(tenant.act(iid, "stop"), 409, "invalid-state")
    assert "is terminated" in body["detail"] and "accepts no action" in body["detail"]
    assert_problem(tenant.act(iid, "hibernate"), 400, "validation-error")


def test_another_tenants_instance_does_not_exist(
    tenant: Tenant, make_tenant: Callable[[Any], Tenant], backdoor: Backdoor
) -> None:
    launch = tenant.launch()
    iid, aid = launch["instance"]["id"], launch["action"]["id"]
    other = make_tenant(tenant.client)
    assert_problem(other.get(f"/v1/instances/{iid}"), 404, "not-found")
    assert_problem(other.get(f"/v1/instances/{iid}/actions"), 404, "not-found")
    assert_problem(other.get(f"/v1/actions/{aid}"), 404, "not-found")
    assert_problem(other.act(iid, "stop"), 404, "not-found")
    assert_problem(other.terminate(iid), 404, "not-found")
    assert other.get("/v1/instances").json() == {"data": [], "next_cursor": None}
    tenant.finished(aid)
    assert len(backdoor.events("action.completed", about=iid)) == 1  # nothing the other tenant did counted


def test_lists_page_newest_first_and_filter(tenant: Tenant) -> None:
    launched = [tenant.launch(name=f"web-{i}")["instance"]["id"] for i in range(5)]
    for iid in launched:
        wait_for(lambda iid=iid: tenant.instance(iid)["state"] == "running")
    tenant.finished(tenant.act(launched[0], "stop").json()["id"])

    first = tenant.get("/v1/instances", limit=2).json()
    second = tenant.get("/v1/instances", limit=2, cursor=first["next_cursor"]).json()
    third = tenant.get("/v1/instances", limit=2, cursor=second["next_cursor"]).json()
    assert [i["id"] for i in first["data"] + second["data"] + third["data"]] == launched[::-1]
    assert third["next_cursor"] is None
    stopped = tenant.get("/v1/instances", state="stopped").json()["data"]
    assert [i["id"] for i in stopped] == [launched[0]]
    assert len(tenant.get("/v1/instances", state="running", region="fra1").json()["data"]) == 4
    assert tenant.get("/v1/instances", region="nyc1").json()["data"] == []
    assert_problem(tenant.get("/v1/instances", state="asleep"), 400, "validation-error")


def test_launch_validation_is_422_and_quota_409(
    make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant], backdoor: Backdoor
) -> None:
    tenant = make_tenant(make_client(quota_vcpus=4))
    body = assert_problem(tenant.create(region="mars1"), 422, "unknown-region")
    assert body["errors"][0]["location"] == "body.region"
    assert_problem(tenant.create(instance_type="cpu-9000"), 422, "unknown-instance-type")
    assert_problem(tenant.create(instance_type="gpu-a100x1", region="fra1"), 422, "instance-type-not-offered")
    tenant.launch(instance_type="cpu-2")
    tenant.launch(instance_type="cpu-2")  # 4 of 4 vCPUs, counting the pending ones
    quota = assert_problem(tenant.create(instance_type="cpu-1"), 409, "quota-exceeded")
    assert "vCPUs" in quota["detail"]
    assert len(backdoor.events("instance.requested")) == 2


def test_no_host_with_room_fails_with_placement_error(tenant: Tenant, backdoor: Backdoor) -> None:
    launch = tenant.launch(instance_type="gpu-h100x1", region="fra1", image="ubuntu-24.04-cuda12")
    done = tenant.finished(launch["action"]["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "placement_error"
    failed = tenant.instance(launch["instance"]["id"])
    assert failed["state"] == "failed" and failed["state_reason"] == done["error"]["message"]
    assert backdoor.kinds(launch["instance"]["id"]) == [
        "instance.requested",
        "pending→failed",
        "instance.failed",
        "action.completed",
    ]


def test_hosts_that_always_fail_end_in_failed_with_everything_released(
    make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant], backdoor: Backdoor
) -> None:
    tenant = make_tenant(make_client(sim_failure_rate=1.0, saga_max_attempts=3))
    launch = tenant.launch()
    iid = launch["instance"]["id"]
    done = tenant.finished(launch["action"]["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "host_error"
    assert "after 3 attempts" in done["error"]["message"]
    instance = tenant.instance(iid)
    assert instance["state"] == "failed" and instance["locked"] is False
    assert backdoor.allocation(iid) is None
    claimed = backdoor.events("allocation.claimed", about=iid)
    released = backdoor.events("allocation.released", about=iid)
    assert len(claimed) == len(released) == 3
    assert len({e["data"]["host_id"] for e in claimed}) == 3, "every attempt on another host"
    assert backdoor.kinds(iid) == [
        *CREATED[:3],
        "allocation.released",
        "provisioning→pending",
        "allocation.claimed",
        "pending→provisioning",
        "allocation.released",
        "provisioning→pending",
        "allocation.claimed",
        "pending→provisioning",
        "allocation.released",
        "provisioning→failed",
        "instance.failed",
        "action.completed",
    ]
    # A failed instance can only be terminated; that asks the host to destroy it again
    # (harmless) and releases nothing more.
    assert_problem(tenant.act(iid, "start"), 409, "invalid-state")
    assert tenant.finished(tenant.terminate(iid).json()["id"])["status"] == "succeeded"
    assert len(backdoor.events("allocation.released", about=iid)) == 3
    check_no_leaks(backdoor)


def test_a_retried_launch_with_the_same_idempotency_key_launches_once(tenant: Tenant, backdoor: Backdoor) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "launch-web-1"}
    body = {"name": "web-1", "region": "fra1", "instance_type": "cpu-1", "image": "ubuntu-24.04"}
    first = tenant.client.post("/v1/instances", headers=headers, json=body)
    again = tenant.client.post("/v1/instances", headers=headers, json=body)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert len(tenant.get("/v1/instances").json()["data"]) == 1
    assert len(backdoor.events("instance.requested")) == 1
