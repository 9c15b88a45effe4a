"""The gateway: the FastAPI app on Ray Serve (``app``), the seed's ``WebSocketManager``
(``manager``), one socket's ``Session``, the replica's own server and auth. Importing this
package imports none of them."""
