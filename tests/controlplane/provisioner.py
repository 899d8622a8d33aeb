"""A folder-backed dynamic provisioner for the default StorageClass, as kind's local-path one.

``up()`` creates the StorageClass ``standard`` (default, provisioner ``mlvisor.dev/local-path``,
reclaim Delete, binding Immediate) and binds this identity to the built-in ClusterRole
``system:persistent-volume-provisioner``. This loop watches claims of that class that are not
bound yet and creates, for each, a hostPath PersistentVolume on a fresh folder under
``<state>/volumes/`` pre-bound to the claim (``claimRef``); kube-controller-manager's
PersistentVolume controller does the binding, as with any external provisioner. A Released
volume of ours is deleted with its folder.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
from pathlib import Path
from typing import Any

from controlplane.apiclient import Api, ApiError

PROVISIONER = "mlvisor.dev/local-path"
STORAGE_CLASS = "standard"
log = logging.getLogger("mlvisor.provisioner")

STORAGE_CLASS_OBJECT = {
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
}
BINDING_OBJECT = {
    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
    "metadata": {"name": "mlvisor:local-path-provisioner"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:persistent-volume-provisioner"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:mlvisor:local-path-provisioner"}],
}


class Provisioner:
    def __init__(self, api: Api, root: Path) -> None:
        self.api = api
        self.root = root

    async def run(self) -> None:
        await asyncio.gather(self._claims(), self._volumes())

    async def _claims(self) -> None:
        async for kind, pvc in self.api.watch("/api/v1/persistentvolumeclaims"):
            if kind in ("ADDED", "MODIFIED"):
                try:
                    await self._provision(pvc)
                except Exception as e:
                    log.warning("provisioning %s: %s", pvc["metadata"].get("name"), e)

    async def _provision(self, pvc: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc.get("spec", {})
        if spec.get("storageClassName") != STORAGE_CLASS or spec.get("volumeName") or meta.get("deletionTimestamp"):
            return
        name = f"pvc-{meta['uid']}"
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o777)
        size = (spec.get("resources", {}).get("requests") or {}).get("storage", "1Gi")
        pv = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size}, "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete", "storageClassName": STORAGE_CLASS,
                "volumeMode": spec.get("volumeMode", "Filesystem"),
                "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": meta["namespace"],
                             "name": meta["name"], "uid": meta["uid"]},
            },
        }
        try:
            await self.api.request("POST", "/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for %s/%s at %s", name, meta["namespace"], meta["name"], folder)
        except ApiError as e:
            if e.status != 409:
                raise

    async def _volumes(self) -> None:
        async for kind, pv in self.api.watch("/api/v1/persistentvolumes"):
            if kind == "DELETED" or pv.get("status", {}).get("phase") != "Released":
                continue
            meta = pv["metadata"]
            if (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") != PROVISIONER:
                continue
            if pv["spec"].get("persistentVolumeReclaimPolicy") != "Delete":
                continue
            path = Path(pv["spec"]["hostPath"]["path"])
            if path.parent == self.root:
                shutil.rmtree(path, ignore_errors=True)
            try:
                await self.api.request("DELETE", f"/api/v1/persistentvolumes/{meta['name']}")
            except ApiError as e:
                if e.status != 404:
                    log.warning("deleting %s: %s", meta["name"], e)


async def _serve(api_url: str, pki: Path, root: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Api(api_url, pki, "provisioner") as api:
        work = asyncio.create_task(Provisioner(api, root).run())
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([work, stopper], return_when=asyncio.FIRST_COMPLETED)
        if work in done and work.exception():
            raise work.exception()  # type: ignore[misc]
        work.cancel()


def main() -> None:
    """``python -m controlplane.provisioner``: run beside the node, as kind runs local-path-provisioner."""
    p = argparse.ArgumentParser(prog="python -m controlplane.provisioner")
    p.add_argument("--api-url", required=True)
    p.add_argument("--pki", type=Path, required=True, help="folder with ca.crt and provisioner.crt/.key")
    p.add_argument("--root", type=Path, required=True, help="where the volumes' folders are made")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args.api_url, args.pki, args.root))


if __name__ == "__main__":
    main()
