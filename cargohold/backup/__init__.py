"""Backups of volumes to object storage (issue #17): targets, the repository format, verify."""
