"""Vendor adapters: each turns rendered fields into a vendor request and classifies the answer."""
