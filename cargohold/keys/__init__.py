"""Data keys of encrypted volumes (issue 19): generated per volume, wrapped by a
key-encryption key from a provider (a key file, a Kubernetes Secret's bytes, a KMS), and
unwrapped by the manager only to hand an engine its volume's key. Never stored in clear.

data_keys.py: the data key, the encryption id, the AES-GCM wrapping (pure);
providers.py: the provider interface, ``file`` and the in-memory twin, the ``Keyring``;
kms.py: the ``kms`` provider (boto3). docs/keys.md says how to configure them.
"""
