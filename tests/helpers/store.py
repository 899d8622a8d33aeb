"""A Store fed with whole objects, as the operator's watches feed it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlvisor.operator.kube.store import Store


class Feed:
    """The watches' side of a store in tests: ``put`` an object as added or modified, ``drop`` it as deleted."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, obj: Mapping[str, Any]) -> None:
        self.store.put(obj)

    def drop(self, obj: Mapping[str, Any]) -> None:
        self.store.drop(obj)


def store_with(*objects: Mapping[str, Any], **kwargs: Any) -> tuple[Store, Feed]:
    store = Store(**kwargs)
    for obj in objects:
        store.put(obj)
    return store, Feed(store)
