"""Generated from proto/csi.proto by `python -m cargohold.csi.gen`; do not edit."""
