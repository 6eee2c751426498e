"""The MLflow store's registry: registered models, version creation (idempotent), and reading versions back."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_persist._format.naming import validate_model_name
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import BEST_ALIAS, VersionInfo, tag
from mlflow_persist._store.descriptions import model_description
from mlflow_persist._store.mlflow_runs import MlflowRuns
from mlflow_persist._store.registered_marker import mark_registered
from mlflow_persist._store.translate import local_path, translate, translated
from mlflow_persist._store.version_create import create_version_once, rest_store_of
from mlflow_persist.errors import NotFoundError, PersistError

__all__ = ["MlflowRegistry"]

log = package_logger("mlflow_persist.store")

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")


class MlflowRegistry(MlflowRuns):
    """Registered models and their versions: create once, list, get, resolve a `models:/` URI, delete."""

    def ensure_registered_model(self, name: str) -> None:
        validate_model_name(name)
        if name in self._known_models:
            return
        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name, tags={tag("managed"): "true"}, description=model_description(name)
                )
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently: fine if it exists now
        else:
            if not model.description and model.tags.get(tag("managed")) == "true":  # made by an earlier version
                self.client.update_registered_model(name, description=model_description(name))
        self._known_models.add(name)

    @translated("register the checkpoint version")
    def register_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: Mapping[str, Any],
        retried: bool = True,
        description: str | None = None,
    ) -> VersionInfo:
        """Register `source` as a new version with all its tags in the creating call.

        Idempotent per (source, category): a source already registered under that category (a retried call, a
        POST the HTTP client sent twice) returns the existing version, and duplicates of a retried POST are
        removed. One source may carry several categories (a periodic version sharing a performance checkpoint).
        A local checkpoint directory gets its registered marker (registered_marker.py).
        """
        info = self._register_version(name, source, run_id, tags, retried, description)
        path = local_path(self.relocate_uri(source))
        if path is not None:
            mark_registered(path)
        return info

    def _register_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: Mapping[str, Any],
        retried: bool,
        description: str | None,
    ) -> VersionInfo:
        self._changed(name)
        self.ensure_registered_model(name)
        category = str(tags.get(tag("category"), ""))

        def same(v: VersionInfo) -> bool:
            return v.source == source and v.category == (category or "unknown")

        if retried:
            existing = [v for v in self.list_versions(name) if same(v)]
            if existing:
                return min(existing, key=lambda v: v.version)
        text_tags = {k: str(v) for k, v in tags.items()}
        rest = None if self.lock_is_shared else rest_store_of(self.registry)
        if rest is None:
            try:
                created = self.registry.create_model_version(
                    name, source=source, run_id=run_id, tags=text_tags, await_creation_for=0, description=description
                )
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST" or name not in self._known_models:
                    raise
                # the registered model was deleted (by an operator) since it was cached: create it again
                self._known_models.discard(name)
                self.ensure_registered_model(name)
                created = self.registry.create_model_version(
                    name, source=source, run_id=run_id, tags=text_tags, await_creation_for=0, description=description
                )
        else:  # a lost reply is looked for in the registry before the request goes out again
            created = create_version_once(
                rest,
                name,
                source,
                run_id,
                text_tags,
                description,
                find_existing=lambda: min(
                    (v for v in self.list_versions(name) if same(v)), key=lambda v: v.version, default=None
                ),
            )
            if isinstance(created, VersionInfo):
                log.info(
                    "%s: the server had registered %s as v%d before its reply was lost; kept that version",
                    name,
                    source,
                    created.version,
                )
                return created
        if self.lock_is_shared:
            return self._to_info(created)  # no HTTP retries locally, so no duplicate POSTs
        duplicates = sorted((v for v in self.list_versions(name) if same(v)), key=lambda v: v.version)
        for extra in duplicates[1:]:
            log.warning(
                "removing duplicate registration v%s of %s (same source as v%s)",
                extra.version,
                name,
                duplicates[0].version,
            )
            self.registry.delete_model_version(name, str(extra.version))
        return duplicates[0] if duplicates else self._to_info(created)

    @translated("list the model's versions")
    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, oldest first (empty when the model does not exist)."""
        versions: list[VersionInfo] = []
        token = None
        while True:
            page = self.registry.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
            versions.extend(self._to_info(mv) for mv in page)
            token = page.token
            if not token:
                break
        return sorted(versions, key=lambda v: v.version)

    #: Versions read per page by `newest_versions` (a restore usually needs the first one).
    NEWEST_PAGE = 20

    def newest_versions(self, name: str) -> Iterator[VersionInfo]:
        """The versions of a registered model, newest first, a page at a time (see the protocol)."""
        token = None
        while True:
            try:
                page = self.registry.search_model_versions(
                    f"name = '{name}'",
                    max_results=self.NEWEST_PAGE,
                    order_by=["version_number DESC"],
                    page_token=token,
                )
            except PersistError:
                raise
            except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and database errors alike
                raise translate(exc, f"list the versions of {name}") from exc
            yield from (self._to_info(mv) for mv in page)
            token = page.token
            if not token:
                return

    def get_version(self, name: str, version: int | str) -> VersionInfo:
        try:
            return self._to_info(self.registry.get_model_version(name, str(version)))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise translate(exc, f"read {name} v{version}") from exc
            raise NotFoundError(
                f"Model {name!r} has no version {version}; run `mlflow-persist history {name}` to see its versions."
            ) from None

    def alias_version(self, name: str, alias: str = BEST_ALIAS) -> VersionInfo | None:
        try:
            return self._to_info(self.registry.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise translate(exc, f"read the alias {alias!r} of {name}") from exc
        except Exception as exc:  # noqa: BLE001 - connection errors
            raise translate(exc, f"read the alias {alias!r} of {name}") from exc

    def resolve(self, uri: str) -> VersionInfo:
        """A version from `models:/name@alias`, `models:/name/latest` or `models:/name/<version>`."""
        match = _MODEL_URI.match(uri)
        if not match:
            raise NotFoundError(
                f"{uri!r} is not a model URI; use models:/<name>@best, models:/<name>/latest or models:/<name>/<n>."
            )
        name, alias, ref = match["name"], match["alias"], match["ref"]
        if alias:
            info = self.alias_version(name, alias)
            if info is None:
                raise NotFoundError(
                    f"Model {name!r} has no alias {alias!r}; check the name or save a checkpoint first."
                )
            return info
        if ref.lower() == "latest":  # the newest version not known to be damaged
            versions = [v for v in self.list_versions(name) if not v.corrupt]
            if not versions:
                raise NotFoundError(f"Model {name!r} has no intact versions; train and save a checkpoint first.")
            return versions[-1]
        if not ref.isdigit():
            raise NotFoundError(f"{ref!r} is not a version number; use a number, `latest` or @<alias>.")
        return self.get_version(name, int(ref))

    @translated("delete the version")
    def delete_version(self, info: VersionInfo) -> None:
        """Delete the registry entry of a version (its artifacts stay: see `delete_artifacts`). A version
        another process deleted first counts as deleted."""
        self._changed(info.name)
        try:
            self.registry.delete_model_version(info.name, str(info.version))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise

    @translated("list the registered models")
    def managed_models(self, prefix: str = "") -> list[str]:
        """Every registered model whose name starts with `prefix`, sorted (every page of the listing)."""
        names: list[str] = []
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            names.extend(m.name for m in page if m.name.startswith(prefix))
            token = page.token
            if not token:
                break
        return sorted(names)
