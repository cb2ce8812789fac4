"""Lemzha kopf operator: watches incidents and ranks their root-cause service."""
