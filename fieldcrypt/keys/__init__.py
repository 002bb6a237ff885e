"""Master keys and what they wrap: providers, the local keystore, the lake's binding, blind-index keys,
MAC keys of the control files, the data-key cache and KMS rate limits.
"""
