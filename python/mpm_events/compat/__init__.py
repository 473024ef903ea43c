"""Drop-in replacements for other claude-mpm event APIs, running on the mpm-events engine.

``mpm_events.compat.event_bus`` replaces ``claude_mpm.services.event_bus`` (the
pyee-based singleton that claude-mpm's hook manager, memory hook and Socket.IO
server publish through). Nothing here is imported by ``import mpm_events``.
"""
