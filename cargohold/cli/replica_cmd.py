"""Placeholder: replica commands are registered here once the server lands."""
