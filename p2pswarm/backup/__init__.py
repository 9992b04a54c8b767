"""Cluster backups: the encrypted file (:mod:`.fileformat`), what it holds (:mod:`.contents`) and how a new
cluster takes it back (:mod:`.restore`)."""
