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

import asyncio
import logging
import shutil
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
                except Exception as e:  # noqa: BLE001 - one claim never stops the others
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
