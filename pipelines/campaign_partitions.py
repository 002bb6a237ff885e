"""The rotation assets' `campaign` dimension in the UI: only the current campaign's partitions are shown.

`<workspace>__start_key_rotation` and the `<workspace>__key_rotation_driver` sensor (for a campaign
started with the CLI) make the current campaign the dimension's only value (assets/rotation.py).
"""

import dagster as dg

from assets.rotation import rotation_campaigns
from assets.scope import WorkspaceScope

CAMPAIGN_TAG = "fieldcrypt/rotation_campaign"


def campaign_partition_requests(
    scope: WorkspaceScope, instance: dg.DagsterInstance, campaign_id: str
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """What makes `campaign_id` the only campaign of the workspace's `campaign` dimension (nothing when it is)."""
    campaigns = rotation_campaigns(scope)
    shown = instance.get_dynamic_partitions(_name(campaigns))
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if campaign_id not in shown:
        requests.append(campaigns.build_add_request([campaign_id]))
    earlier = [key for key in shown if key != campaign_id]
    if earlier:
        requests.append(campaigns.build_delete_request(earlier))
    return requests


def show_campaign_partitions(scope: WorkspaceScope, instance: dg.DagsterInstance, campaign_id: str) -> None:
    """From now on the workspace's rotation assets' partitions are this campaign's (all missing until rotated).

    Dropping an earlier campaign's key hides its partitions from the asset's partition bar
    and the launch dialog; its runs, observations and materialization events stay."""
    name = _name(rotation_campaigns(scope))
    for request in campaign_partition_requests(scope, instance, campaign_id):
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(name, key)


def _name(partitions: dg.DynamicPartitionsDefinition) -> str:
    """The name of a dynamic partitions definition the instance stores (the rotation campaigns' always has one)."""
    if partitions.name is None:
        raise ValueError("a dynamic partitions definition without a name has no keys in the instance")
    return partitions.name
