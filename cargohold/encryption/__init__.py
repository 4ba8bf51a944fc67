"""Encryption at rest (issue 19): the layout of an encrypted volume and its block cipher.

Pure, no I/O: the engine's encrypting device and the control plane's size arithmetic both
use it. docs/encryption.md and docs/formats/encrypted-volume.md describe it.
"""
