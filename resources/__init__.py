"""Dagster resources of the fieldcrypt code location; `resources.environment` picks them from the environment."""

from resources.environment import resources_from_env
from resources.fieldcrypt_resource import FieldcryptResource, KeyProviderResource, LakeResource

__all__ = ["FieldcryptResource", "KeyProviderResource", "LakeResource", "resources_from_env"]
