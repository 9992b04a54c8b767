"""Consensus: the Raft group that orders every scheduling decision.

* :mod:`.messages` — Raft wire messages (kinds: :data:`p2pswarm.wire.KINDS`), entries, snapshots, config changes
* :mod:`.config`   — timing and flow-control settings with presets
* :mod:`.raft`     — the pure Raft core (Ready/Advance); :mod:`.election`, :mod:`.replication`, :mod:`.log`
  and :mod:`.progress` are its parts
* :mod:`.storage`  — durable storage (checksummed append-only file) and MemoryStorage for simulation
* :mod:`.kv`       — a small replicated key/value state machine
"""
