"""Utility sub-commands of ``stori`` (each module exposes ``main(argv) -> int``)."""
