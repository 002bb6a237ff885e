"""What the facade hands to the campaigns: master-key access, a dataset's partition jobs, the workspace
configuration.
"""
