"""A Store over plain dicts shaped like kopf's indexes (key -> the values of the objects under it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mlvisor.operator.kube.store import INDEXES, Store, pod_keys, resource_keys, workload_keys


class DictIndexes(dict):
    """kind's index name -> {key: [values]}, filled from whole objects like kopf's index handlers."""

    def __init__(self, objects: Iterable[Mapping[str, Any]] = ()) -> None:
        super().__init__({name: {} for name in INDEXES.values()})
        for obj in objects:
            self.put(obj)

    def put(self, obj: Mapping[str, Any]) -> None:
        self.drop(obj)
        kind = str(obj["kind"])
        if kind == "Pod":
            keys = pod_keys(obj) or {}
        elif kind in ("Deployment", "Service"):
            keys = workload_keys(obj)
        else:
            keys = resource_keys(obj)
        for key, value in keys.items():
            self[INDEXES[kind]].setdefault(key, []).append(value)

    def drop(self, obj: Mapping[str, Any]) -> None:
        index = self[INDEXES[str(obj["kind"])]]
        name = obj["metadata"]["name"]
        for key in list(index):
            index[key] = [v for v in index[key] if v["metadata"]["name"] != name]
            if not index[key]:
                del index[key]


def store_with(*objects: Mapping[str, Any], **kwargs: Any) -> tuple[Store, DictIndexes]:
    indexes = DictIndexes(objects)
    store = Store(**kwargs)
    store.bind(indexes)
    return store, indexes
