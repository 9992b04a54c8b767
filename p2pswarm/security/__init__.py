"""Security: the cluster CA and node certificates, join tokens, the join handshake, admission.

Pure modules (no clock, no randomness, no sockets; ``now`` is wall-clock seconds
and entropy bytes are passed in by the driver):

* :mod:`.keys`      CURVE key pairs (X25519), Z85, key files, the join endpoint's key
* :mod:`.pki`       the cluster CA (Ed25519), node certificates, trust bundles, CA rotation
                    with cross-signing, revocation lists, sealing secrets under the cluster key
* :mod:`.tokens`    ``P2PS-1-<ca-digest>-<secret>`` join tokens and their rotation state
* :mod:`.messages`  the join handshake's wire messages (kinds: :data:`p2pswarm.wire.KINDS`)
* :mod:`.join`      the join handshake: the joiner's and the sponsor's side
* :mod:`.admission` which CURVE keys the transport admits, and which key each address has

I/O edge: :mod:`.joinchannel` (the join endpoint over ZeroMQ CURVE, gossip port + 1).
The gossip/Raft transport itself is :class:`p2pswarm.transport.zmq.ZmqTransport`
with ``curve=``, ``authorize=`` and ``peer_key=``.

How a node uses them (the wiring ``node/daemon.py`` does):

* **First node** (``up`` without ``--peers``, fresh data dir): make the cluster key
  (32 random bytes, the key-encryption key), ``CertAuthority.create``, its own
  CURVE key and certificate, ``TokenState.create``; print ``tokens.token(ca.digest)``.
  The Raft state gets a *security record*: the ``TrustBundle`` (``encode()``), the
  CA key sealed (``ca.seal(cluster_key, nonce)``), the token state sealed
  (``pki.seal(cluster_key, nonce, tokens.encode(), b"join-token")``), the
  ``RevocationList`` signed (``rl.sign(ca)``), and every issued certificate by
  node id.  The cluster key itself stays out of the Raft state: it is in the data
  dir (0600), or only in memory with ``--autolock``.
* **Joiner** (``up --peers X --token T``): ``parse_token``; key pair
  (``CurveKeys.from_secret``) saved to the data dir *before* asking (a retried,
  half-finished join then presents the same key); ``Joiner.request`` sent with
  ``joinchannel.exchange(join_addr(X), keys, req)``; ``Joiner.handle`` gives the
  certificate, the pinned bundle, the sponsor's certificate (so the transport can
  reach X) and the cluster key.  A ``JoinError`` is the one line to print.
* **Every member** serves ``JoinServer(join_addr(own addr), sponsor_handler(Sponsor(...)))``;
  after a grant it admits the new certificate and proposes it to the Raft state.
  It keeps an ``Admission`` fed from certificates it verified (its members'
  certificates travel in their gossip records and in the Raft state), calls
  ``admission.expire(now)`` every second and ``set_revocations`` /
  ``set_bundle`` when the Raft state changes; the transport asks
  ``admission.authorize`` and ``admission.peer_key``.  With
  ``recv_with_key()`` the node can also drop a message whose claimed source is
  not the node that key belongs to.
* **Leader duties**: re-issue certificates whose ``NodeIdentity.needs_renewal(now)``;
  ``cluster ca --rotate`` = ``rotate_ca`` (propose the new bundle, re-issue every
  certificate, then ``finish_rotation``); ``node rm`` = ``revocations.revoke(nodes=[id])``,
  signed, into the Raft state (and gossiped: members adopt a newer signed list at once).
"""
