"""Sinks: where notifications go (webhook, websocket, log)."""
