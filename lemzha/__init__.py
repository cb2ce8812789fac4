"""Lemzha core: shared by the offline pipeline and the live operator."""

__version__ = "0.1.0"
