"""The Ray shells: actor names and options (``runtime``), the EventHub actor (``hub``) and
the controller actor (``controller``), each a thin wrapper around a core."""
