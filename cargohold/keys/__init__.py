"""Data keys of encrypted volumes (issue 19): generated per volume, wrapped by a
key-encryption key from a provider (a key file, a Kubernetes Secret's bytes, a KMS), and
unwrapped by the manager only to hand an engine its volume's key. Never stored in clear.
"""
