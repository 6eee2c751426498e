"""The MLflow store's aliases and version tags: `best`, corrupt marks, operator alias moves."""

from __future__ import annotations

from typing import Any

from mlflow.exceptions import MlflowException

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import BEST_ALIAS, tag
from mlflow_persist._store.mlflow_registry import MlflowRegistry
from mlflow_persist._store.translate import translated
from mlflow_persist.errors import describe_store_error

__all__ = ["MlflowAliases"]

log = package_logger("mlflow_persist.store")


class MlflowAliases(MlflowRegistry):
    """Aliases and version tags."""

    @translated("move the alias")
    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._changed(name)
        self.registry.set_registered_model_alias(name, alias, str(version))

    @translated("remove the alias")
    def delete_alias(self, name: str, alias: str) -> None:
        self._changed(name)
        try:
            self.registry.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise

    def set_best(self, name: str, version: int) -> None:
        self.set_alias(name, BEST_ALIAS, version)

    @translated("clear the corrupt tag")
    def clear_corrupt(self, name: str, version: int) -> None:
        self._changed(name)
        for key in (tag("corrupt"), tag("corrupt_reason")):
            try:
                self.registry.delete_model_version_tag(name, str(version), key)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise

    @translated("tag the version")
    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._changed(name)
        self.registry.set_model_version_tag(name, str(version), key, str(value))

    def mark_corrupt(self, name: str, version: int, reason: str) -> None:
        self._changed(name)
        try:
            self.registry.set_model_version_tag(name, str(version), tag("corrupt"), "true")
            self.registry.set_model_version_tag(name, str(version), tag("corrupt_reason"), reason[:4000])
        except Exception as exc:  # noqa: BLE001 - the caller goes on with the next version either way
            log.warning("could not tag %s v%s as corrupt: %s", name, version, describe_store_error(exc))

    @translated("read the alias moves")
    def alias_moves(self, name: str) -> list[Any]:
        """Operator alias moves recorded as registered-model tags (legacy.alias_log), oldest first."""
        from mlflow_persist._store.alias_log import alias_moves

        return alias_moves(self.client, name)
