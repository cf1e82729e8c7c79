"""Volumes on the `local` drivers: real instances (sandboxed processes) and real storage under
the storage directory. Data written by a process running inside instance A's sandbox to
`~/volumes/<name>/f` survives a detach, is read back by a process inside instance B after
re-attaching there, and survives a snapshot restored into a new volume — and terminating an
instance leaves its volumes' data alone.

Processes are started in the sandboxes with the host driver's own `spawn` (what the terminal
gateway uses for a session), so HOME, cwd and limits are the instance's. The same journey
through the terminal and the CLI is tests/integration/storage/test_storage_cli.py.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from storage_support import Tenant, wait_for

from hangar.drivers.local import LocalDriver
from hangar.drivers.volumes import LocalVolumeDriver


def run_in(host: LocalDriver, instance_id: str, script: str) -> str:
    """`sh -c script` inside the instance's sandbox; its stdout (it must exit 0)."""
    proc = host.spawn(uuid.UUID(instance_id), ["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, (script, err.decode(errors="replace"))
    return out.decode()


@pytest.fixture
def local(make_client: Callable[..., Any], make_tenant: Callable[[Any], Tenant], tmp_path: Path) -> Any:
    storage = tmp_path / "storage"
    instances = tmp_path / "instances"
    client = make_client(driver="local", instances_dir=instances, storage_dir=storage)
    tenant = make_tenant(client)
    launched: list[str] = []

    class Local:
        def __init__(self) -> None:
            self.tenant = tenant
            self.host = LocalDriver(instances)
            self.volumes = LocalVolumeDriver(storage, instances)

        def instance(self, name: str) -> str:
            iid = tenant.instance("fra1", name=name)
            launched.append(iid)
            return iid

    yield Local()
    for iid in launched:  # no sandboxed process outlives the test
        if tenant.get(f"/v1/instances/{iid}").json()["state"] != "terminated":
            tenant.delete(f"/v1/instances/{iid}")
    for iid in launched:
        wait_for(lambda iid=iid: tenant.get(f"/v1/instances/{iid}").json()["state"] == "terminated", timeout=30)


def test_data_survives_detach_reattach_elsewhere_and_a_snapshot_restore(local: Any) -> None:
    tenant: Tenant = local.tenant
    a, b = local.instance("a"), local.instance("b")
    vid = tenant.available("shared", size_gib=1)
    assert local.volumes.volume_dir(uuid.UUID(vid)).is_dir()

    tenant.attach(vid, a)
    run_in(local.host, a, 'echo "written in A" > "$HOME/volumes/shared/f" && mkdir -p ~/volumes/shared/dir')
    assert run_in(local.host, a, "cat volumes/shared/f") == "written in A\n"

    tenant.ok(tenant.act(vid, "detach"))
    assert run_in(local.host, a, "test -e volumes/shared && echo present || echo gone") == "gone\n"

    tenant.attach(vid, b)
    assert run_in(local.host, b, "cat ~/volumes/shared/f") == "written in A\n"
    run_in(local.host, b, 'echo "and B" >> ~/volumes/shared/f')

    snapshot = tenant.snapshot(vid, "snap-1")
    assert snapshot["state"] == "available"
    run_in(local.host, b, 'echo "after the snapshot" > ~/volumes/shared/f')
    restored = tenant.available("restored", size_gib=2, snapshot_id=snapshot["id"])
    tenant.attach(restored, b)
    assert run_in(local.host, b, "cat ~/volumes/restored/f") == "written in A\nand B\n"
    assert run_in(local.host, b, "cat ~/volumes/shared/f") == "after the snapshot\n"

    # terminating B detaches both volumes and leaves their data alone
    tenant.terminate(b)
    for v in (vid, restored):
        wait_for(lambda v=v: tenant.volume(v)["state"] == "available")
    assert (local.volumes.volume_dir(uuid.UUID(vid)) / "f").read_text() == "after the snapshot\n"
    tenant.attach(vid, a)
    assert run_in(local.host, a, "cat ~/volumes/shared/f") == "after the snapshot\n"

    # delete removes the data
    tenant.ok(tenant.act(vid, "detach"))
    tenant.ok(tenant.delete(f"/v1/volumes/{vid}"))
    assert not local.volumes.volume_dir(uuid.UUID(vid)).exists()
    deleting = tenant.delete(f"/v1/snapshots/{snapshot['id']}")
    assert deleting.status_code == 202
    wait_for(lambda: tenant.get(f"/v1/snapshots/{snapshot['id']}").json()["state"] == "deleted")
    assert not local.volumes.snapshot_dir(uuid.UUID(snapshot["id"])).exists()


def test_attach_refuses_to_hide_a_tenant_directory(local: Any) -> None:
    tenant: Tenant = local.tenant
    a = local.instance("a")
    run_in(local.host, a, "mkdir -p ~/volumes/data && echo mine > ~/volumes/data/own")
    vid = tenant.available("data", size_gib=1)
    response = tenant.act(vid, "attach", instance_id=a)
    done = tenant.finished(response.json()["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "mount_point_busy"
    assert tenant.volume(vid)["state"] == "available" and "instance_id" not in tenant.volume(vid)
    assert run_in(local.host, a, "cat ~/volumes/data/own") == "mine\n"
