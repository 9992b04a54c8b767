"""Workers outside the Raft group: how they learn their assignments from the Raft members."""
