"""Dagster resources of the fieldcrypt code location; `resources.settings` reads the catalog they come from."""

from resources.fieldcrypt_resource import FieldcryptResource, resource_key

__all__ = ["FieldcryptResource", "resource_key"]
