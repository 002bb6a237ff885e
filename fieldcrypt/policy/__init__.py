"""What is protected and where: the authenticated policy and its versions, row selection, the dataset
layout, enablement checks, and the protection ledger of what each file holds.
"""
