"""Inbound providers: each turns a raw HTTP request into verified, normalised events."""
