"""The Ray-free core: protocol, encoding, errors, the hub's log and its reader, routing,
ordering, the job registry, heartbeats and send queues. Nothing here imports ``ray``,
``fastapi`` or ``starlette`` (``tests/unit/test_layering.py`` walks this package to check),
so these modules are tested in milliseconds."""
